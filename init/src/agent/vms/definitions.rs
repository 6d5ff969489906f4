//! The definition store: validation, define, delete, list and get; each definition one
//! `<name>.json` in the definitions directory, written crash-safe.

use super::{stopped_entry, Entry, VmError, Vms};
use crate::agent::api::{DiskCopy, ImageKind, VmSpec, VmState, VmStatus};
use crate::agent::vm_console::VmConsole;
use crate::agent::vm_devices;
use crate::sys::atomic::{remove_durable, write_atomic};
use std::fs;
use std::io;
use std::sync::Arc;

/// Checks a VM definition before it is stored.
pub fn validate(spec: &VmSpec) -> Result<(), VmError> {
    let bad = |m: String| Err(VmError::Invalid(m));
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 63
        && !spec.name.starts_with('-')
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return bad(format!(
            "name {:?} must be 1 to 63 lowercase letters, digits or '-', not starting with '-'",
            spec.name
        ));
    }
    // The limits keel-vmm applies: a VM that cannot start is refused here.
    spec.check_limits()
        .map_err(|e| VmError::Invalid(e.to_string()))?;
    crate::agent::images::check_name(&spec.kernel)?;
    if let Some(initrd) = &spec.initrd {
        crate::agent::images::check_name(initrd)?;
    }
    vm_devices::validate(spec).map_err(|e| VmError::Invalid(e.to_string()))
}

impl Vms {
    pub fn list(&self) -> Vec<VmStatus> {
        let statuses: Vec<VmStatus> = self.lock().values().map(Entry::status).collect();
        statuses.into_iter().map(|s| self.with_events(s)).collect()
    }

    pub fn get(&self, name: &str) -> Result<VmStatus, VmError> {
        let status = self.lock().get(name).map(Entry::status);
        status
            .map(|s| self.with_events(s))
            .ok_or_else(|| VmError::NotFound(name.to_string()))
    }

    pub fn console(&self, name: &str) -> Result<Arc<VmConsole>, VmError> {
        self.lock()
            .get(name)
            .map(|e| Arc::clone(&e.console))
            .ok_or_else(|| VmError::NotFound(name.to_string()))
    }

    /// Whether any VM definition, made or being made, uses this image.
    pub fn uses_image(&self, kind: ImageKind, name: &str) -> Option<String> {
        let uses = |spec: &VmSpec| match kind {
            ImageKind::Kernel => spec.kernel == name,
            ImageKind::Initrd => spec.initrd.as_deref() == Some(name),
            ImageKind::Disk => spec
                .disks
                .iter()
                .any(|d| d.copy == DiskCopy::Shared && d.image == name),
        };
        let entries = self.lock();
        let defining = self.defining();
        entries
            .values()
            .map(|e| &e.spec)
            .chain(defining.values())
            .find(|spec| uses(spec))
            .map(|spec| spec.name.clone())
    }

    /// Pids and names of the running VMMs.
    pub fn running(&self) -> Vec<(String, u32)> {
        self.lock()
            .values()
            .filter_map(|e| {
                let pid = e.run.as_ref().and_then(|r| r.pid)?;
                Some((e.spec.name.clone(), pid))
            })
            .collect()
    }

    /// Names and states of the VMs not stopped (starting ones too).
    pub(super) fn runs(&self) -> Vec<(String, VmState)> {
        self.lock()
            .values()
            .filter_map(|e| e.run.as_ref().map(|r| (e.spec.name.clone(), r.state)))
            .collect()
    }

    pub fn define(&self, spec: VmSpec) -> Result<VmStatus, VmError> {
        validate(&spec)?;
        {
            let entries = self.lock();
            let mut defining = self.defining();
            if entries.contains_key(&spec.name) || defining.contains_key(&spec.name) {
                return Err(VmError::Exists(spec.name));
            }
            defining.insert(spec.name.clone(), spec.clone());
        }
        let written = self.write_definition(&spec);
        let mut entries = self.lock();
        self.defining().remove(&spec.name);
        written?;
        let console = self.console_of(&spec.name);
        let entry = Self::new_entry(spec, console);
        let status = entry.status();
        entries.insert(status.spec.name.clone(), entry);
        Ok(status)
    }

    /// The VM's private disk copies and its definition file; nothing of them on failure.
    fn write_definition(&self, spec: &VmSpec) -> Result<(), VmError> {
        let path = self.paths.defs.join(format!("{}.json", spec.name));
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|e| VmError::Io("encode", path.clone(), io::Error::other(e)))?;
        vm_devices::make_copies(&self.store, &self.store.vm_copies(), spec)?;
        if let Err(e) = write_atomic(&path, &json, 0o600) {
            vm_devices::remove_copies(&self.store.vm_copies(), &spec.name);
            return Err(VmError::Io("write", path, e.source));
        }
        Ok(())
    }

    pub fn delete(&self, name: &str) -> Result<VmStatus, VmError> {
        let mut entries = self.lock();
        let entry = stopped_entry(&entries, name, "delete it (power it off first)")?;
        let path = self.paths.defs.join(format!("{name}.json"));
        remove_durable(&path).map_err(|e| VmError::Io("remove", path, e.source))?;
        let _ = fs::remove_dir_all(self.dir(name));
        vm_devices::remove_copies(&self.store.vm_copies(), name);
        let status = entry.status();
        entries.remove(name);
        Ok(status)
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::vms::test_support::*;
    use crate::agent::vms::Op;
    use crate::sys::atomic::testdir::TestDir;

    #[test]
    fn validation_names_the_bad_field() {
        let cases: Vec<(VmSpec, &str)> = vec![
            (
                VmSpec {
                    name: "Bad".into(),
                    ..spec("a")
                },
                "name \"Bad\"",
            ),
            (
                VmSpec {
                    vcpus: 0,
                    ..spec("a")
                },
                "vcpus 0",
            ),
            (
                VmSpec {
                    memory_mib: 8,
                    ..spec("a")
                },
                "memory_mib 8",
            ),
            (
                VmSpec {
                    cmdline: "a\nb".into(),
                    ..spec("a")
                },
                "cmdline",
            ),
            (
                VmSpec {
                    kernel: "../k".into(),
                    ..spec("a")
                },
                "\"../k\"",
            ),
        ];
        for (s, want) in cases {
            let err = validate(&s).unwrap_err();
            assert_eq!(err.status(), 400);
            assert!(err.to_string().contains(want), "{err}");
        }
        assert!(validate(&spec("web-1")).is_ok());
    }

    #[test]
    fn definitions_persist_and_delete() {
        let dir = TestDir::new("vms-defs");
        let vms = open(&dir, "/bin/false");
        vms.define(spec("a")).unwrap();
        assert_eq!(vms.define(spec("a")).unwrap_err().status(), 409);
        drop(vms);
        let vms = open(&dir, "/bin/false");
        let list = vms.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].state, VmState::Stopped);
        assert_eq!(vms.control("a", Op::Pause).unwrap_err().status(), 409);
        assert_eq!(vms.get("b").unwrap_err().status(), 404);
        vms.delete("a").unwrap();
        assert!(open(&dir, "/bin/false").list().is_empty());
    }

    #[test]
    fn a_vm_being_defined_holds_its_name_and_images_but_not_the_table() {
        let dir = TestDir::new("vms-defining");
        let vms = open(&dir, "/bin/false");
        // As while "b"'s disk copies are made: the table is free, the name and kernel taken.
        vms.defining().insert("b".into(), spec("b"));
        assert!(vms.list().is_empty());
        assert_eq!(vms.define(spec("b")).unwrap_err().status(), 409);
        assert_eq!(vms.uses_image(ImageKind::Kernel, "k").as_deref(), Some("b"));
        vms.define(spec("a")).unwrap();
        vms.defining().clear();
        vms.define(spec("b")).unwrap();
        assert_eq!(vms.list().len(), 2);
        assert!(vms.defining().is_empty());
    }
}
