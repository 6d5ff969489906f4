//! The kernel module index as `depmod` writes it, shared by the image builder (which picks the
//! modules that go into the image) and PID 1 (which loads them at cold plug): module names,
//! `modules.dep` and `modules.alias` lines, and the glob matching both need.

/// A module's name as the kernel knows it, from its path: `kernel/arch/x86/kvm/kvm-amd.ko` →
/// `kvm_amd` (file name up to `.ko`, with `-` spelled `_`, as modprobe normalises it).
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.find(".ko").map_or(file, |end| &file[..end]);
    stem.replace('-', "_")
}

/// One line of `modules.dep`: `path: dependency paths…`, each dependency listed before the modules
/// it needs in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DepEntry<'a> {
    /// The module's path relative to `/lib/modules/<release>/`.
    pub path: &'a str,
    /// The paths it needs, as listed.
    pub needs: Vec<&'a str>,
    /// The whole line, for writing a filtered copy of the file.
    pub line: &'a str,
}

/// A `modules.dep` line without the `path:` separator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MalformedDepLine {
    /// 1-based line number.
    pub number: usize,
    /// The line as found.
    pub text: String,
}

/// The entries of a `modules.dep` text, blank lines skipped, malformed lines as errors (the
/// caller decides whether one is fatal).
pub fn dep_entries(text: &str) -> impl Iterator<Item = Result<DepEntry<'_>, MalformedDepLine>> {
    text.lines().enumerate().filter_map(|(index, line)| {
        if line.trim().is_empty() {
            return None;
        }
        Some(match line.split_once(':') {
            Some((path, needs)) if !path.trim().is_empty() => Ok(DepEntry {
                path: path.trim(),
                needs: needs.split_whitespace().collect(),
                line,
            }),
            _ => Err(MalformedDepLine {
                number: index + 1,
                text: line.to_string(),
            }),
        })
    })
}

/// An `alias <glob> <module>` line of `modules.alias` as (glob, normalised module name); comments
/// and anything else give `None`.
pub fn alias_entry(line: &str) -> Option<(&str, String)> {
    let mut fields = line.split_whitespace();
    match (fields.next(), fields.next(), fields.next(), fields.next()) {
        (Some("alias"), Some(glob), Some(module), None) => Some((glob, module.replace('-', "_"))),
        _ => None,
    }
}

/// How `*` and `?` treat `/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobStyle {
    /// fnmatch(3) without flags, as modprobe matches `modules.alias`: `*` and `?` match any
    /// character, `/` included (DMI modaliases hold dates like `04/01/2014`).
    Plain,
    /// Paths: `*` and `?` stay within one component, `**` crosses components.
    Path,
}

/// Glob matching with `*`, `?`, `[a-z]`, `[!x]` / `[^x]` and `\x`, and in [`GlobStyle::Path`]
/// also `**`. Neither can backtrack exponentially on a pattern full of stars.
pub fn glob_match(pattern: &str, text: &str, style: GlobStyle) -> bool {
    match style {
        GlobStyle::Plain => plain_match(pattern.as_bytes(), text.as_bytes()),
        GlobStyle::Path => path_match(pattern.as_bytes(), text.as_bytes()),
    }
}

/// fnmatch with one backtracking point (the last `*`): a later star always subsumes an earlier
/// one when `*` matches everything. Cold plug runs this for every alias against every device, so
/// it must fail fast on the first differing literal, without allocating.
fn plain_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last '*': (pattern index after it, text index it absorbed up to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if p.get(pi) == Some(&b'*') {
            pi += 1;
            star = Some((pi, ti));
            continue;
        }
        if let Some(next) = (pi < p.len())
            .then(|| single(p, pi, t[ti], GlobStyle::Plain))
            .flatten()
        {
            pi = next;
            ti += 1;
            continue;
        }
        match star {
            Some((after_star, absorbed)) => {
                star = Some((after_star, absorbed + 1));
                pi = after_star;
                ti = absorbed + 1;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Path globs, where a `*` stops at `/`, so one backtracking point is not enough: dynamic
/// programming over (pattern, text) positions instead, linear in their product. Used at build
/// time only, on short paths.
fn path_match(p: &[u8], t: &[u8]) -> bool {
    let width = t.len() + 1;
    // matches[pi * width + ti]: does p[pi..] match t[ti..]? Filled from the ends backwards.
    let mut matches = vec![false; (p.len() + 1) * width];
    matches[p.len() * width + t.len()] = true;
    for pi in (0..p.len()).rev() {
        for ti in (0..=t.len()).rev() {
            matches[pi * width + ti] = if p[pi] == b'*' {
                let crosses = p.get(pi + 1) == Some(&b'*');
                let after = if crosses { pi + 2 } else { pi + 1 };
                // The star matches nothing more, or absorbs one character and stays.
                matches[after * width + ti]
                    || t.get(ti)
                        .is_some_and(|&c| (crosses || c != b'/') && matches[pi * width + ti + 1])
            } else {
                t.get(ti).is_some_and(|&c| {
                    single(p, pi, c, GlobStyle::Path)
                        .is_some_and(|next| matches[next * width + ti + 1])
                })
            };
        }
    }
    matches[0]
}

/// If the pattern element at `p[pi..]` (not a star) matches `c`, the pattern index after it.
fn single(p: &[u8], pi: usize, c: u8, style: GlobStyle) -> Option<usize> {
    if style == GlobStyle::Path && c == b'/' && matches!(p[pi], b'?' | b'[') {
        return None;
    }
    match p[pi] {
        b'?' => Some(pi + 1),
        b'[' => match class(&p[pi..], c) {
            Some((true, len)) => Some(pi + len),
            Some((false, _)) => None,
            None => (c == b'[').then_some(pi + 1),
        },
        b'\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        literal => (literal == c).then_some(pi + 1),
    }
}

/// Matches one `[...]` class at the start of `p` against `c`: `Some((matched, length))`, or
/// `None` if the class is not terminated (then `[` is an ordinary character).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let low = *p.get(i)?;
        if low == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&high)) if high != b']' => {
                matched |= low <= c && c <= high;
                i += 3;
            }
            _ => {
                matched |= low == c;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_globs() {
        let cases = [
            ("abc", "abc", true),
            ("abc", "abd", false),
            ("a*", "a", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbbd", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("[abc]x", "bx", true),
            ("[abc]x", "dx", false),
            ("[a-f]", "e", true),
            ("[a-f]", "g", false),
            ("[!a-f]", "g", true),
            ("[^a-f]", "a", false),
            ("[]]", "]", true),
            ("[a-]", "-", true),
            ("[abc", "[abc", true),
            ("\\*", "*", true),
            ("\\*", "x", false),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("a*b", "a/x/b", true),
            ("a?b", "a/b", true),
            (
                "dmi*:svnLENOVO:*",
                "dmi:bvnSeaBIOS:bd04/01/2014:svnLENOVO:pn1",
                true,
            ),
            (
                "pci:v00008086d00001099sv*sd*bc*sc*i*",
                "pci:v00008086d00001099sv00008086sd00000001bc02sc00i00",
                true,
            ),
            (
                "pci:v00008086d00001099sv*sd*bc*sc*i*",
                "pci:v00008086d0000109Asv00008086sd00000001bc02sc00i00",
                false,
            ),
            (
                "cpu:type:x86,ven*fam*mod*:feature:*00C2*",
                "cpu:type:x86,ven0002fam0017mod0001:feature:,0000,0001,00C2,00E0",
                true,
            ),
            ("acpi*:LNXPWRBN:*", "acpi:LNXPWRBN:", true),
            ("acpi*:PNP0C0C:*", "acpi:LNXPWRBN:", false),
            (
                "input:b*v*p*e*-e*k*r*a*m*l*s*f*w*",
                "input:b0019v0000p0001e0000-e0,1,k74,ramlsfw",
                true,
            ),
            ("virtio:d00000001v*", "virtio:d00000001v00001AF4", true),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                glob_match(pattern, text, GlobStyle::Plain),
                want,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn path_globs() {
        let cases = [
            ("kvm*", "kvm_amd", true),
            ("kernel/*/e1000.ko", "kernel/drivers/e1000.ko", true),
            ("kernel/*/e1000.ko", "kernel/drivers/net/e1000.ko", false),
            ("kernel/**/e1000.ko", "kernel/drivers/net/e1000.ko", true),
            ("kernel/**", "kernel/a/b/c.ko", true),
            (
                "kernel/drivers/net/ethernet/intel/**",
                "kernel/drivers/net/e1000.ko",
                false,
            ),
            ("a?b", "a/b", false),
            ("a[/]b", "a/b", false),
            ("dm?mod", "dm_mod", true),
            ("kernel/drivers/net/*", "kernel/drivers/net/a/b.ko", false),
            ("nft_*", "nft_ct", true),
            ("nft_*", "nf_tables", false),
            ("e1000?", "e1000e", true),
            ("e1000?", "e1000", false),
            ("kvm", "kvm_amd", false),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                glob_match(pattern, text, GlobStyle::Path),
                want,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        let pattern = "*a".repeat(40);
        let text = "b".repeat(2000);
        for style in [GlobStyle::Plain, GlobStyle::Path] {
            assert!(!glob_match(&pattern, &text, style));
            assert!(glob_match(&pattern, &"a".repeat(2000), style));
        }
    }

    #[test]
    fn names_from_paths() {
        let cases = [
            ("kernel/arch/x86/kvm/kvm-amd.ko", "kvm_amd"),
            ("kernel/drivers/block/loop.ko", "loop"),
            ("kernel/fs/squashfs/squashfs.ko.xz", "squashfs"),
            ("evdev.ko", "evdev"),
            ("dm-mod", "dm_mod"),
            ("kernel/drivers/md/dm-mod.ko", "dm_mod"),
            ("8021q.ko", "8021q"),
        ];
        for (path, want) in cases {
            assert_eq!(module_name(path), want);
        }
    }

    #[test]
    fn dep_lines() {
        let text = "a/x.ko: a/y.ko a/z.ko\n\na/y.ko:\nbroken line\n: a/y.ko\n";
        let entries: Vec<_> = dep_entries(text).collect();
        assert_eq!(
            entries,
            [
                Ok(DepEntry {
                    path: "a/x.ko",
                    needs: vec!["a/y.ko", "a/z.ko"],
                    line: "a/x.ko: a/y.ko a/z.ko",
                }),
                Ok(DepEntry {
                    path: "a/y.ko",
                    needs: vec![],
                    line: "a/y.ko:",
                }),
                Err(MalformedDepLine {
                    number: 4,
                    text: "broken line".into(),
                }),
                Err(MalformedDepLine {
                    number: 5,
                    text: ": a/y.ko".into(),
                }),
            ]
        );
    }

    #[test]
    fn alias_lines() {
        let cases = [
            ("alias pci:v*d* e1000", Some(("pci:v*d*", "e1000"))),
            (
                "alias devname:mapper/control dm-mod",
                Some(("devname:mapper/control", "dm_mod")),
            ),
            ("# Aliases extracted from modules themselves.", None),
            ("alias onlyglob", None),
            ("alias a b c", None),
            ("softdep x pre: y", None),
        ];
        for (line, want) in cases {
            let got = alias_entry(line);
            assert_eq!(
                got.as_ref().map(|(glob, module)| (*glob, module.as_str())),
                want,
                "{line}"
            );
        }
    }
}
