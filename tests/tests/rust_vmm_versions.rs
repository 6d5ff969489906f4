//! Every rust-vmm crate resolves to exactly one version in the locked workspace.

use keel_tests::rust_vmm::{self, RUST_VMM_CRATES};
use keel_tests::{paths, Error};

#[test]
fn each_rust_vmm_crate_resolves_to_one_version() -> Result<(), Error> {
    let metadata = rust_vmm::workspace_metadata(&paths::workspace_root())?;
    let report = rust_vmm::check(&metadata, RUST_VMM_CRATES).map_err(Error::Metadata)?;
    // The workspace depends on kvm-ioctls directly; not finding it means the check looks at the
    // wrong data and would pass vacuously.
    assert!(
        report.found.contains_key("kvm-ioctls"),
        "cargo metadata lists no kvm-ioctls; found only {:?}",
        report.found
    );
    assert!(
        report.duplicates.is_empty(),
        "rust-vmm crates resolved to more than one version:\n{}",
        rust_vmm::describe(&report.duplicates)
    );
    Ok(())
}
