//! Test and benchmark tools that speak to a running server from outside, as the fleet would:
//! the fleet simulator (`unbrick-fleetsim`: N machines over DHCP, TFTP, HTTP and the agent API)
//! and the load generator (`unbrick-loadgen`: agents at once, console timings). They live apart
//! from the product crates; the black-box tests and the bench scripts build them.
#![forbid(unsafe_code)]

pub mod exchange;
