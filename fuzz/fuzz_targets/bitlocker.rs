//! The BitLocker metadata parser (FVE header and its entries, read from any disk the agent
//! finds). The input is a volume: its first 512 bytes are the boot sector, the rest is what any
//! read at a metadata offset returns, so the fuzzer works on the block the offsets point at.
#![no_main]
use libfuzzer_sys::fuzz_target;
use remediation_payload::bitlk;

fuzz_target!(|data: &[u8]| {
    let boot = &data[..data.len().min(512)];
    let block = data.get(512..).unwrap_or(&[]);
    let mut reads = 0;
    let mut read_at = |off: u64, len: usize| -> std::io::Result<Vec<u8>> {
        reads += 1;
        let src = if off == 0 { boot } else { block };
        if src.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "past the end",
            ));
        }
        Ok(src[..src.len().min(len)].to_vec())
    };
    let _ = bitlk::is_bitlocker(boot);
    if let Ok(info) = bitlk::read(&mut read_at) {
        let _ = info.recovery_ids();
        let _ = info.method_name();
    }
    assert!(
        reads <= 4,
        "at most the boot sector and three metadata copies are read"
    );
});
