//! What the VM tests share: a definition, a `Vms` over a test directory, a stand-in keel-vmm.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::agent::api::{DiskCopy, ImageKind, OnCrash, StoreKind};
use crate::sys::atomic::testdir::TestDir;
use std::time::Instant;

pub(crate) fn spec(name: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 64,
        kernel: "k".into(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        on_crash: OnCrash::Stop,
        disks: Vec::new(),
        nics: Vec::new(),
    }
}

pub(crate) fn open(dir: &TestDir, vmm: &str) -> Arc<Vms> {
    open_with(dir, vmm, Starter::default())
}

pub(crate) fn open_with(dir: &TestDir, vmm: &str, starter: Starter) -> Arc<Vms> {
    let store = Arc::new(Store::open(dir.path().join("data"), StoreKind::Ram).unwrap());
    let paths = VmPaths {
        vmm: vmm.into(),
        defs: dir.path().join("vms"),
        run: dir.path().join("run"),
        jail: None,
    };
    Vms::open_with(paths, store, starter).unwrap()
}

/// A stand-in keel-vmm: a shell script.
pub(crate) fn script(dir: &TestDir, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let vmm = dir.path().join("vmm.sh");
    fs::write(&vmm, format!("#!/bin/sh\n{body}\n")).unwrap();
    fs::set_permissions(&vmm, fs::Permissions::from_mode(0o755)).unwrap();
    vmm.to_str().unwrap().into()
}

/// Puts kernel image "k" in the store.
pub(crate) fn kernel(vms: &Vms) {
    let data = b"k";
    let digest = super::super::images::hex(&<sha2::Sha256 as sha2::Digest>::digest(data));
    vms.store
        .upload(ImageKind::Kernel, "k", &digest, 1, &mut &data[..])
        .unwrap();
}

/// Polls VM `name` until `done` holds (10 s at most).
pub(crate) fn wait_for(vms: &Vms, name: &str, done: impl Fn(&VmStatus) -> bool) -> VmStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = vms.get(name).unwrap();
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A shared (not copied) disk.
pub(crate) fn disk(image: &str, read_only: bool) -> super::super::api::VmDisk {
    super::super::api::VmDisk {
        image: image.into(),
        copy: DiskCopy::Shared,
        read_only,
        serial: None,
    }
}
