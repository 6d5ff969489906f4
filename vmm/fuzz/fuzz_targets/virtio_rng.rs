//! libFuzzer entry for keel_vmm::devices::virtio::fuzz::fuzz_rng (the guest's memory and queues
//! come from the input).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    keel_vmm::devices::virtio::fuzz::fuzz_rng(data);
});
