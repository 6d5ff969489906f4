//! Choosing kernel modules: a list of names or globs (`rootfs/modules.list`), closed over
//! `modules.dep`, so only what a server needs goes into RAM; and the filtered module index
//! files written next to them.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use keel_kmod::{alias_entry, dep_entries, glob_match, module_name, GlobStyle};

use crate::tree::{Tree, TreeError};

/// Errors selecting modules.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// Cannot read {0}: {1}
    #[error("Cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// {0}: malformed modules.dep line {1}: {2}
    #[error("{0}: malformed modules.dep line {1}: {2}")]
    BadDep(PathBuf, usize, String),
    /// {source_name} line {line}: {pattern:?} matches no module of kernel {release}
    #[error("{source_name} line {line}: {pattern:?} matches no module of kernel {release}")]
    NoMatch {
        source_name: String,
        line: usize,
        pattern: String,
        release: String,
    },
    /// {0}
    #[error("{0}")]
    Tree(#[from] TreeError),
}

/// One line of a module list: a module name (`kvm_amd`, `dm-mod`) or a path relative to
/// `/lib/modules/<release>/` (`kernel/drivers/net/ethernet/intel/**`). Both may use `*`
/// (within one path component), `**` (across components) and `?`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    pub text: String,
    pub line: usize,
}

impl Pattern {
    fn is_path(&self) -> bool {
        self.text.contains('/')
    }
}

/// Parses a module list: one pattern per line, `#` comments, blank lines ignored.
pub fn parse_list(text: &str) -> Vec<Pattern> {
    text.lines()
        .enumerate()
        .filter_map(|(index, raw)| {
            let text = raw.split('#').next().unwrap_or("").trim();
            (!text.is_empty()).then(|| Pattern {
                text: text.to_string(),
                line: index + 1,
            })
        })
        .collect()
}

/// Patterns from a comma-separated command-line value (`--modules virtio_net,virtio_blk`).
pub fn parse_names(names: &str) -> Vec<Pattern> {
    parse_list(&names.replace(',', "\n"))
}

/// The module index of one kernel: `modules.dep`, `modules.alias`, `modules.builtin`.
#[derive(Clone, Debug, Default)]
pub struct ModuleIndex {
    pub release: String,
    /// Module path -> the paths it depends on.
    deps: BTreeMap<String, Vec<String>>,
    /// `modules.dep` lines in their original order, with the module each describes.
    dep_lines: Vec<(String, String)>,
    /// `modules.alias` lines with the module name each points at (comment lines: `None`).
    alias_lines: Vec<(Option<String>, String)>,
    /// Paths of modules built into the kernel (listing these is not an error).
    builtin: Vec<String>,
    builtin_text: String,
}

impl ModuleIndex {
    /// Reads the index `depmod` wrote into `dir` (`/lib/modules/<release>`).
    pub fn load(dir: &Path, release: &str) -> Result<Self, ModulesError> {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|e| ModulesError::Read(path, e))
        };
        let dep_path = dir.join("modules.dep");
        Self::parse(
            release,
            &read("modules.dep")?,
            &read("modules.alias")?,
            &read("modules.builtin")?,
        )
        .map_err(|(line, text)| ModulesError::BadDep(dep_path, line, text))
    }

    fn parse(
        release: &str,
        dep: &str,
        alias: &str,
        builtin: &str,
    ) -> Result<Self, (usize, String)> {
        let mut index = ModuleIndex {
            release: release.to_string(),
            builtin: builtin.lines().map(str::to_string).collect(),
            builtin_text: builtin.to_string(),
            ..Default::default()
        };
        for entry in dep_entries(dep) {
            let entry = entry.map_err(|bad| (bad.number, bad.text))?;
            let needs = entry.needs.iter().map(|need| need.to_string()).collect();
            index.deps.insert(entry.path.to_string(), needs);
            index
                .dep_lines
                .push((entry.path.to_string(), entry.line.to_string()));
        }
        index.alias_lines = alias
            .lines()
            .map(|line| {
                (
                    alias_entry(line).map(|(_, module)| module),
                    line.to_string(),
                )
            })
            .collect();
        Ok(index)
    }

    /// Module paths matched by `patterns`, plus everything they depend on.
    pub fn resolve(
        &self,
        patterns: &[Pattern],
        source_name: &str,
    ) -> Result<BTreeSet<String>, ModulesError> {
        let mut chosen = BTreeSet::new();
        for pattern in patterns {
            let matches = |path: &str| {
                if pattern.is_path() {
                    glob_match(&pattern.text, path, GlobStyle::Path)
                } else {
                    let name = pattern.text.replace('-', "_");
                    glob_match(&name, &module_name(path), GlobStyle::Path)
                }
            };
            chosen.extend(self.deps.keys().filter(|p| matches(p)).cloned());
            let found =
                self.deps.keys().any(|p| matches(p)) || self.builtin.iter().any(|p| matches(p));
            if !found {
                return Err(ModulesError::NoMatch {
                    source_name: source_name.to_string(),
                    line: pattern.line,
                    pattern: pattern.text.clone(),
                    release: self.release.clone(),
                });
            }
        }
        let mut pending: Vec<String> = chosen.iter().cloned().collect();
        while let Some(module) = pending.pop() {
            for dep in self.deps.get(&module).into_iter().flatten() {
                if chosen.insert(dep.clone()) {
                    pending.push(dep.clone());
                }
            }
        }
        Ok(chosen)
    }

    /// `chosen` in an order that loads every module after its dependencies.
    pub fn load_order(&self, chosen: &BTreeSet<String>) -> Vec<String> {
        let mut visited = BTreeSet::new();
        let mut order = Vec::new();
        for module in chosen {
            self.visit(module, &mut visited, &mut order);
        }
        order
    }

    fn visit(&self, module: &str, visited: &mut BTreeSet<String>, order: &mut Vec<String>) {
        if !visited.insert(module.to_string()) {
            return;
        }
        for dep in self.deps.get(module).into_iter().flatten() {
            self.visit(dep, visited, order);
        }
        order.push(module.to_string());
    }

    /// `modules.dep` reduced to the chosen modules.
    pub fn filtered_dep(&self, chosen: &BTreeSet<String>) -> String {
        self.dep_lines
            .iter()
            .filter(|(module, _)| chosen.contains(module))
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }

    /// `modules.alias` reduced to aliases of the chosen modules (comments kept).
    pub fn filtered_alias(&self, chosen: &BTreeSet<String>) -> String {
        let names: BTreeSet<String> = chosen.iter().map(|p| module_name(p)).collect();
        self.alias_lines
            .iter()
            .filter(|(target, _)| target.as_ref().is_none_or(|name| names.contains(name)))
            .map(|(_, line)| format!("{line}\n"))
            .collect()
    }

    /// Adds the chosen modules and their index (`modules.dep`, `modules.alias`,
    /// `modules.builtin`) to `tree` under `lib/modules/<release>/`, read from `dir`.
    pub fn add_to_tree(
        &self,
        tree: &mut Tree,
        dir: &Path,
        chosen: &BTreeSet<String>,
    ) -> Result<(), ModulesError> {
        let base = format!("lib/modules/{}", self.release);
        for module in chosen {
            tree.add_file(&format!("{base}/{module}"), &dir.join(module), false)?;
        }
        tree.add_bytes(&format!("{base}/modules.dep"), self.filtered_dep(chosen))?;
        tree.add_bytes(
            &format!("{base}/modules.alias"),
            self.filtered_alias(chosen),
        )?;
        tree.add_bytes(
            &format!("{base}/modules.builtin"),
            self.builtin_text.clone(),
        )?;
        Ok(())
    }
}

/// Reads and parses a module list file.
pub fn read_list(path: &Path) -> Result<Vec<Pattern>, ModulesError> {
    let text = fs::read_to_string(path).map_err(|e| ModulesError::Read(path.to_path_buf(), e))?;
    Ok(parse_list(&text))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/arch/x86/kvm/kvm.ko: kernel/virt/lib/irqbypass.ko
kernel/arch/x86/kvm/kvm-amd.ko: kernel/arch/x86/kvm/kvm.ko kernel/virt/lib/irqbypass.ko kernel/drivers/crypto/ccp/ccp.ko
kernel/virt/lib/irqbypass.ko:
kernel/drivers/crypto/ccp/ccp.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/net/ethernet/intel/e1000/e1000.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko: kernel/drivers/ptp/ptp.ko
kernel/drivers/ptp/ptp.ko:
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias devname:mapper/control dm_mod
alias cpu:type:x86,ven*fam*mod*:feature:*0085* kvm_amd
";
    const BUILTIN: &str = "kernel/drivers/virtio/virtio.ko\n";

    fn index() -> ModuleIndex {
        ModuleIndex::parse("6.1.0-test", DEP, ALIAS, BUILTIN).unwrap()
    }

    fn names(set: &BTreeSet<String>) -> Vec<String> {
        set.iter().map(|p| module_name(p)).collect()
    }

    #[test]
    fn resolves_names_globs_and_dependencies() {
        let index = index();
        let cases: &[(&str, &[&str])] = &[
            ("kvm_amd", &["kvm_amd", "kvm", "ccp", "irqbypass"]),
            ("kvm-amd", &["kvm_amd", "kvm", "ccp", "irqbypass"]),
            ("dm-mod", &["dm_mod"]),
            (
                "kernel/drivers/net/ethernet/intel/**",
                &["e1000", "e1000e", "ptp"],
            ),
            ("# only a comment\n\nvirtio", &[]),
        ];
        for (list, want) in cases {
            let got = index.resolve(&parse_list(list), "test.list").unwrap();
            let mut got = names(&got);
            got.sort();
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            want.sort();
            assert_eq!(got, want, "{list}");
        }
    }

    #[test]
    fn unknown_module_is_an_error_naming_it_and_the_line() {
        let err = index()
            .resolve(&parse_list("kvm\n# x\nkvm_amdd\n"), "modules.list")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "modules.list line 3: \"kvm_amdd\" matches no module of kernel 6.1.0-test"
        );
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let index = index();
        let chosen = index
            .resolve(&parse_names("kvm_amd,e1000e"), "--modules")
            .unwrap();
        let order: Vec<String> = index
            .load_order(&chosen)
            .iter()
            .map(|p| module_name(p))
            .collect();
        let position = |name: &str| order.iter().position(|m| m == name).unwrap();
        assert_eq!(order.len(), 6);
        assert!(position("irqbypass") < position("kvm"));
        assert!(position("kvm") < position("kvm_amd"));
        assert!(position("ccp") < position("kvm_amd"));
        assert!(position("ptp") < position("e1000e"));
    }

    #[test]
    fn index_files_keep_only_chosen_modules() {
        let index = index();
        let chosen = index
            .resolve(&parse_names("dm_mod,e1000"), "--modules")
            .unwrap();
        assert_eq!(
            index.filtered_dep(&chosen),
            "kernel/drivers/md/dm-mod.ko:\nkernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n"
        );
        assert_eq!(
            index.filtered_alias(&chosen),
            "# Aliases extracted from modules themselves.\n\
             alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n\
             alias devname:mapper/control dm_mod\n"
        );
    }

    #[test]
    fn repository_lists_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rootfs");
        let modules = read_list(&root.join("modules.list")).unwrap();
        assert!(modules.iter().any(|p| p.text == "kvm_amd"));
        let early = read_list(&root.join("early-modules.list")).unwrap();
        let early: Vec<&str> = early.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(early, ["loop", "squashfs"]);
    }
}
