//! The image kernel's headers, for building out-of-tree modules against it.

use crate::packages::{download_exact, find_deb};
use crate::{deb, in_temp_dir, prune, touch, Image};
use anyhow::{anyhow, bail, Context, Result};
use provision::cache;
use provision::steps::step;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

const HEADERS_WHAT: &str = "kernel headers";
/// Bump when the way the headers are unpacked or fixed up changes.
const HEADERS_FORMAT: &str = "testbed-headers-v1";

/// What is recorded next to unpacked headers (`headers/<kernel>/headers.json`).
#[derive(Serialize, Deserialize, Debug)]
struct HeadersMeta {
    format: String,
    kernel_version: String,
    kernel_package_version: String,
    packages: Vec<String>,
}

/// Makes sure the headers of `image`'s kernel are unpacked in the cache and returns the
/// build directory to pass to `make -C DIR M=$PWD modules` (the `-amd64` headers tree).
///
/// Downloads `linux-headers-<ABI>-amd64`, `linux-headers-<ABI>-common` and
/// `linux-kbuild-<major.minor>` at exactly the kernel package's version (same private apt
/// state as the image), unpacks them into `headers/<kernel>_<version>/` and turns their
/// absolute paths (`include /usr/src/...` in the Makefile, links to `/usr/src/...`) into
/// relative ones, so the tree works where it is. Fails, naming the version, when the
/// archive no longer has it. Prints progress on stderr, never on stdout.
pub fn ensure_headers(image: &Image) -> Result<PathBuf> {
    let kver = &image.kernel_version;
    let pver = &image.kernel_package_version;
    if pver.is_empty() {
        bail!("{HEADERS_WHAT}: the image does not record its kernel's package version; rebuild it (`testbed image`)");
    }
    let packages = header_packages(kver)?;
    let root = cache::root();
    let dir = root.join("headers").join(format!("{kver}_{pver}"));
    let build = dir.join("usr/src").join(format!("linux-headers-{kver}"));
    let meta_ok = |dir: &Path| {
        std::fs::read(dir.join("headers.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<HeadersMeta>(&b).ok())
            .is_some_and(|m| m.format == HEADERS_FORMAT)
    };
    if meta_ok(&dir) && build.join("Makefile").is_file() {
        touch(&dir);
        eprintln!("[testbed] {HEADERS_WHAT}: cached in {}", dir.display());
        return Ok(build);
    }
    if dir.exists() {
        // From an older format (or incomplete): unpack again.
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let debs = root.join("debs");
    in_temp_dir(&dir, |tmp| {
        let dl = tmp.join("debs");
        std::fs::create_dir_all(&dl)?;
        step(HEADERS_WHAT, &format!("download the headers of {kver} ({pver})"), || {
            download_exact(&debs, &dl, &packages, pver, kver)
        })?;
        step(HEADERS_WHAT, "unpack", || {
            for p in &packages {
                deb::extract(&find_deb(&dl, p)?, tmp)?;
            }
            std::fs::remove_dir_all(&dl)?;
            Ok(())
        })?;
        step(HEADERS_WHAT, "fix up absolute paths", || fix_up_headers(tmp))?;
        let tmp_build = tmp.join("usr/src").join(format!("linux-headers-{kver}"));
        if !tmp_build.join("Makefile").is_file() {
            bail!("{HEADERS_WHAT}: {} has no Makefile", packages[0]);
        }
        let meta = HeadersMeta {
            format: HEADERS_FORMAT.to_string(),
            kernel_version: kver.clone(),
            kernel_package_version: pver.clone(),
            packages: packages.clone(),
        };
        std::fs::write(tmp.join("headers.json"), serde_json::to_vec_pretty(&meta)?)?;
        Ok(())
    })?;
    prune(&root.join("headers"), 2, &dir);
    eprintln!("[testbed] {HEADERS_WHAT}: unpacked in {}", dir.display());
    let cc = format!("gcc-{}", kernel_gcc_major(&build).unwrap_or_else(|| "12".into()));
    if Command::new(&cc).arg("--version").output().is_err() {
        eprintln!(
            "[testbed] {HEADERS_WHAT}: note: the kernel was built with {cc}, which is not installed \
             here; install it or pass CC=gcc to make"
        );
    }
    Ok(build)
}

/// The header packages of kernel release `6.1.0-28-amd64`: `linux-headers-6.1.0-28-amd64`,
/// `linux-headers-6.1.0-28-common`, `linux-kbuild-6.1`.
fn header_packages(kver: &str) -> Result<Vec<String>> {
    let abi = kver
        .strip_suffix("-amd64")
        .ok_or_else(|| anyhow!("{HEADERS_WHAT}: kernel release {kver:?} is not an -amd64 flavour"))?;
    let mut parts = abi.split('.');
    let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
        bail!("{HEADERS_WHAT}: cannot tell the major.minor of kernel release {kver:?}");
    };
    let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
    if major.is_empty() || !major.chars().all(|c| c.is_ascii_digit()) || minor.is_empty() {
        bail!("{HEADERS_WHAT}: cannot tell the major.minor of kernel release {kver:?}");
    }
    Ok(vec![
        format!("linux-headers-{abi}-amd64"),
        format!("linux-headers-{abi}-common"),
        format!("linux-kbuild-{major}.{minor}"),
    ])
}

/// The gcc major version from the headers' `.kernelvariables` (`... gcc-12`).
fn kernel_gcc_major(build: &Path) -> Option<String> {
    let text = std::fs::read_to_string(build.join(".kernelvariables")).ok()?;
    let at = text.find("gcc-")? + 4;
    let v: String = text[at..].chars().take_while(char::is_ascii_digit).collect();
    (!v.is_empty()).then_some(v)
}

/// Makes the unpacked header packages under `root` independent of their place: absolute
/// symlinks that point into the tree become relative, and Makefile lines
/// `include /usr/src/...` (the -amd64 tree includes the -common tree's Makefile) include
/// relative to the Makefile's own directory.
fn fix_up_headers(root: &Path) -> Result<()> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let ty = e.file_type()?;
            let rel_dir = format!("/{}", dir.strip_prefix(root)?.to_string_lossy());
            if ty.is_dir() {
                stack.push(p);
            } else if ty.is_symlink() {
                let target = std::fs::read_link(&p)?;
                let t = target.to_string_lossy().into_owned();
                if t.starts_with('/') && root.join(t.trim_start_matches('/')).symlink_metadata().is_ok() {
                    std::fs::remove_file(&p)?;
                    std::os::unix::fs::symlink(rel_path(&rel_dir, &t), &p)
                        .with_context(|| format!("relink {}", p.display()))?;
                }
            } else if e.file_name() == "Makefile" {
                let text = std::fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
                if let Some(fixed) = relative_includes(&text, &rel_dir) {
                    std::fs::write(&p, fixed)?;
                }
            }
        }
    }
    Ok(())
}

/// `text` with every `include /abs/path` line rewritten relative to the including
/// Makefile's directory `dir` (an absolute path as installed), or None if there is none.
fn relative_includes(text: &str, dir: &str) -> Option<String> {
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.strip_prefix("include /") {
            Some(rest) if !rest.contains(char::is_whitespace) => {
                changed = true;
                format!("include $(dir $(lastword $(MAKEFILE_LIST))){}", rel_path(dir, &format!("/{rest}")))
            }
            _ => l.to_string(),
        })
        .collect();
    changed.then(|| lines.join("\n") + if text.ends_with('\n') { "\n" } else { "" })
}

/// The relative path from directory `from` to `to` (both absolute, no `..`).
fn rel_path(from: &str, to: &str) -> String {
    let f: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = vec![".."; f.len() - common];
    parts.extend(&t[common..]);
    if parts.is_empty() {
        ".".to_string()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_package_names() {
        assert_eq!(
            header_packages("6.1.0-28-amd64").unwrap(),
            ["linux-headers-6.1.0-28-amd64", "linux-headers-6.1.0-28-common", "linux-kbuild-6.1"]
        );
        assert_eq!(header_packages("6.12.9-amd64").unwrap()[2], "linux-kbuild-6.12");
        assert!(header_packages("6.1.0-28-arm64").is_err());
        assert!(header_packages("x-amd64").is_err());
    }

    #[test]
    fn relative_paths() {
        assert_eq!(
            rel_path(
                "/usr/src/linux-headers-6.1.0-28-amd64",
                "/usr/src/linux-headers-6.1.0-28-common/Makefile"
            ),
            "../linux-headers-6.1.0-28-common/Makefile"
        );
        assert_eq!(
            rel_path("/lib/modules/6.1.0-28-amd64", "/usr/src/linux-headers-6.1.0-28-amd64"),
            "../../../usr/src/linux-headers-6.1.0-28-amd64"
        );
        assert_eq!(rel_path("/usr/src", "/usr/lib/linux-kbuild-6.1"), "../lib/linux-kbuild-6.1");
        assert_eq!(rel_path("/a", "/a"), ".");
        let mk = "include /usr/src/linux-headers-6.1.0-28-common/Makefile\n";
        assert_eq!(
            relative_includes(mk, "/usr/src/linux-headers-6.1.0-28-amd64").as_deref(),
            Some("include $(dir $(lastword $(MAKEFILE_LIST)))../linux-headers-6.1.0-28-common/Makefile\n")
        );
        assert_eq!(relative_includes("include foo.mk\nall:\n", "/x"), None);
    }

    #[test]
    fn fix_up_header_tree() {
        let root = std::env::temp_dir().join(format!("headers-fixup-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let amd64 = root.join("usr/src/linux-headers-1.2.0-3-amd64");
        let common = root.join("usr/src/linux-headers-1.2.0-3-common");
        let kbuild = root.join("usr/lib/linux-kbuild-1.2/scripts");
        let modules = root.join("lib/modules/1.2.0-3-amd64");
        for d in [&amd64, &common, &kbuild, &modules] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(amd64.join("Makefile"), "include /usr/src/linux-headers-1.2.0-3-common/Makefile\n")
            .unwrap();
        std::fs::write(common.join("Makefile"), "all:\n\t@echo common-$(KERNELRELEASE)\n").unwrap();
        std::os::unix::fs::symlink("/usr/lib/linux-kbuild-1.2/scripts", amd64.join("scripts")).unwrap();
        std::os::unix::fs::symlink("/usr/src/linux-headers-1.2.0-3-amd64", modules.join("build")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/elsewhere", modules.join("other")).unwrap();
        fix_up_headers(&root).unwrap();
        assert_eq!(
            std::fs::read_link(amd64.join("scripts")).unwrap(),
            Path::new("../../lib/linux-kbuild-1.2/scripts")
        );
        assert!(amd64.join("scripts").is_dir());
        assert!(modules.join("build").join("Makefile").is_file());
        assert_eq!(std::fs::read_link(modules.join("other")).unwrap(), Path::new("/nonexistent/elsewhere"));
        // The include works from the tree's own place (when make is installed).
        if let Ok(out) = Command::new("make").arg("-s").arg("-C").arg(&amd64).arg("KERNELRELEASE=x").output()
        {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "common-x");
        }
        let _ = std::fs::remove_dir_all(&root);
    }

    /// `ensure_headers` for the current image kernel, then a hello-world module built
    /// against it with the host's gcc and make.
    #[test]
    #[ignore = "downloads the kernel headers (~14 MB) and needs make and gcc"]
    fn headers_build_a_module() {
        let r = crate::packages::resolve(&cache::root().join("debs")).unwrap();
        let image = Image {
            kernel: PathBuf::new(),
            initrd: PathBuf::new(),
            kernel_version: r.kernel_package.trim_start_matches("linux-image-").to_string(),
            kernel_package_version: r.kernel_package_version.clone(),
        };
        let build = ensure_headers(&image).unwrap();
        assert!(build.ends_with(format!("linux-headers-{}", image.kernel_version)), "{}", build.display());
        // Cached the second time.
        assert_eq!(ensure_headers(&image).unwrap(), build);
        let m = std::env::temp_dir().join(format!("hello-module-{}", std::process::id()));
        std::fs::create_dir_all(&m).unwrap();
        std::fs::write(m.join("Makefile"), "obj-m := hello.o\n").unwrap();
        std::fs::write(
            m.join("hello.c"),
            "#include <linux/module.h>\nstatic int __init hello_init(void) { pr_info(\"hello\\n\"); return 0; }\n\
             static void __exit hello_exit(void) {}\nmodule_init(hello_init);\nmodule_exit(hello_exit);\n\
             MODULE_LICENSE(\"GPL\");\n",
        )
        .unwrap();
        let out = Command::new("make")
            .arg("-C")
            .arg(&build)
            .arg(format!("M={}", m.display()))
            .arg("modules")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ko = std::fs::read(m.join("hello.ko")).unwrap();
        let info = crate::elf::section(&ko, ".modinfo").unwrap();
        let vermagic = format!("vermagic={} ", image.kernel_version);
        assert!(
            info.windows(vermagic.len()).any(|w| w == vermagic.as_bytes()),
            "{}",
            String::from_utf8_lossy(info)
        );
        let _ = std::fs::remove_dir_all(&m);
    }
}
