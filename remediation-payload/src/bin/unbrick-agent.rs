//! The recovery agent: `/init` of the recovery initramfs. See `remediation_payload::agent`.
fn main() {
    remediation_payload::agent::main()
}
