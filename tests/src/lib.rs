//! Black-box test helpers live in the test files.
