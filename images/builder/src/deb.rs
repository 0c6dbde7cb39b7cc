//! Reading a Debian package: an `ar` archive whose `control.tar.*` holds the package's
//! fields and whose `data.tar.*` holds its files.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::{Component, Path};

/// Calls `read` with the decompressed tar stream of the member `NAME.tar[.xz|.gz]`.
fn with_tar<T>(deb: &Path, name: &str, read: impl FnOnce(&mut dyn Read) -> Result<T>) -> Result<T> {
    let file = std::fs::File::open(deb).with_context(|| format!("open {}", deb.display()))?;
    let mut archive = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let mut entry = entry.with_context(|| format!("{}: not a Debian package", deb.display()))?;
        let id = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let Some(compression) = id.strip_prefix(name).and_then(|r| r.strip_prefix(".tar")) else {
            continue;
        };
        let r = match compression {
            ".xz" => read(&mut xz2::read::XzDecoder::new(entry)),
            ".gz" => read(&mut flate2::read::GzDecoder::new(entry)),
            "" => read(&mut entry),
            // Debian's archive compresses with xz; zstd (Ubuntu's choice) would need another C
            // library and no package of ours uses it.
            _ => bail!("{}: {id} has a compression this builder does not read", deb.display()),
        };
        return r.with_context(|| format!("{}: read {id}", deb.display()));
    }
    bail!("{}: no {name}.tar.* member", deb.display())
}

/// Unpacks the package's files into `dest` (what `dpkg -x` does).
pub(crate) fn extract(deb: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest).with_context(|| format!("create {}", dest.display()))?;
    with_tar(deb, "data", |r| {
        let mut tar = tar::Archive::new(r);
        tar.set_overwrite(true);
        tar.unpack(dest).with_context(|| format!("unpack into {}", dest.display()))
    })
}

/// A field of the package's `control` file, e.g. `Version` (what `dpkg-deb -f` prints).
pub(crate) fn field(deb: &Path, name: &str) -> Result<String> {
    let control = with_tar(deb, "control", |r| {
        let mut tar = tar::Archive::new(r);
        for entry in tar.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let mut parts = path.components().filter(|c| *c != Component::CurDir);
            if parts.next() == Some(Component::Normal("control".as_ref())) && parts.next().is_none() {
                let mut text = String::new();
                entry.read_to_string(&mut text)?;
                return Ok(text);
            }
        }
        bail!("no control file")
    })?;
    let paragraph: deb822_fast::Paragraph =
        control.parse().map_err(|e| anyhow!("{}: control file: {e:?}", deb.display()))?;
    paragraph
        .get(name)
        .map(|v| v.trim().to_string())
        .ok_or_else(|| anyhow!("{}: the control file has no {name} field", deb.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A tar stream with the given (path, mode, contents) files and (path, target) links.
    fn tar_of(files: &[(&str, u32, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(vec![]);
        for (path, mode, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        for (path, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(vec![], 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn deb_of(control: &[u8], data: (&str, Vec<u8>)) -> Vec<u8> {
        let mut a = ar::Builder::new(vec![]);
        for (name, bytes) in
            [("debian-binary", b"2.0\n".to_vec()), ("control.tar.xz", control.to_vec()), data]
        {
            let h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
            a.append(&h, &bytes[..]).unwrap();
        }
        a.into_inner().unwrap()
    }

    #[test]
    fn reads_fields_and_unpacks_files() {
        let control = xz(&tar_of(
            &[(
                "./control",
                0o644,
                b"Package: linux-image-amd64\nVersion: 6.1.192-3\nDepends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\nDescription: x\n more\n",
            )],
            &[],
        ));
        let data = tar_of(
            &[("./bin/busybox", 0o755, b"\x7fELF"), ("./etc/a", 0o644, b"a")],
            &[("./bin/sh", "busybox")],
        );
        let dir = std::env::temp_dir().join(format!("deb-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, member) in
            [("data.tar.xz", xz(&data)), ("data.tar", data.clone()), ("data.tar.gz", gz(&data))]
                .into_iter()
                .enumerate()
        {
            let deb = dir.join(format!("p{i}.deb"));
            std::fs::write(&deb, deb_of(&control, member)).unwrap();
            assert_eq!(field(&deb, "Version").unwrap(), "6.1.192-3");
            assert_eq!(field(&deb, "Depends").unwrap(), "linux-image-6.1.0-57-amd64 (= 6.1.192-3)");
            assert!(field(&deb, "Nope").is_err());
            let root = dir.join(format!("root{i}"));
            extract(&deb, &root).unwrap();
            assert_eq!(std::fs::read(root.join("bin/busybox")).unwrap(), b"\x7fELF");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(root.join("bin/busybox")).unwrap().permissions().mode() & 0o777,
                0o755
            );
            assert_eq!(std::fs::read_link(root.join("bin/sh")).unwrap(), Path::new("busybox"));
            assert_eq!(std::fs::read(root.join("etc/a")).unwrap(), b"a");
        }
        let bad = dir.join("bad.deb");
        std::fs::write(&bad, deb_of(&control, ("data.tar.zst", vec![0; 8]))).unwrap();
        assert!(format!("{:#}", extract(&bad, &dir.join("bad")).unwrap_err()).contains("compression"));
        std::fs::write(&bad, b"not an ar archive").unwrap();
        assert!(field(&bad, "Version").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }
}
