//! The recovery agent: `/init` of the recovery initramfs. See `remediation_payload::agent`.
// missing_docs is for library crates: a binary exports nothing.
#![allow(missing_docs)]
fn main() {
    remediation_payload::agent::main()
}
