//! The initramfs: a "newc" cpio archive (as the kernel's unpacker reads it), written with the
//! `cpio` crate from entries sorted by path, with fixed owners and times, so the same inputs
//! give the same bytes.

use std::collections::BTreeMap;
use std::io::Write;

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

/// An archive being put together in memory. Parent directories are added as needed (0755).
#[derive(Default)]
pub(crate) struct Cpio {
    entries: BTreeMap<String, (u32, Kind)>,
}

impl Cpio {
    fn add(&mut self, path: &str, perm: u32, kind: Kind) {
        let path = path.trim_matches('/');
        let mut parent = String::new();
        for comp in path.split('/').collect::<Vec<_>>().split_last().map(|x| x.1).unwrap_or(&[]) {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            self.entries.entry(parent.clone()).or_insert((0o755, Kind::Dir));
        }
        self.entries.insert(path.to_string(), (perm, kind));
    }

    pub(crate) fn dir(&mut self, path: &str, perm: u32) {
        self.add(path, perm, Kind::Dir);
    }

    pub(crate) fn file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        self.add(path, perm, Kind::File(data));
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) {
        self.add(path, 0o777, Kind::Symlink(target.to_string()));
    }

    pub(crate) fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.add(path, perm, Kind::CharDev(major, minor));
    }

    /// Writes the archive: the entries (inodes numbered from 1, owner root, time 0), the
    /// trailer, and zeros up to a multiple of 512 bytes, as cpio(1) pads.
    pub(crate) fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut out = Counting { inner: w, written: 0 };
        for (ino, (path, (perm, kind))) in self.entries.iter().enumerate() {
            let (ty, data, rdev, nlink): (u32, &[u8], (u32, u32), u32) = match kind {
                Kind::Dir => (0o040000, &[], (0, 0), 2),
                Kind::File(d) => (0o100000, d, (0, 0), 1),
                Kind::Symlink(t) => (0o120000, t.as_bytes(), (0, 0), 1),
                Kind::CharDev(ma, mi) => (0o020000, &[], (*ma, *mi), 1),
            };
            let size = u32::try_from(data.len())
                .map_err(|_| std::io::Error::other(format!("{path}: larger than a cpio entry can hold")))?;
            let mut entry = cpio::NewcBuilder::new(path)
                .ino(ino as u32 + 1)
                .mode(ty | (perm & 0o7777))
                .nlink(nlink)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1)
                .write(&mut out, size);
            entry.write_all(data)?;
            entry.finish()?;
        }
        cpio::newc::trailer(&mut out)?;
        let pad = (512 - out.written % 512) % 512;
        out.write_all(&vec![0; pad])
    }
}

/// Counts the bytes written through it (for the final padding).
struct Counting<W> {
    inner: W,
    written: usize,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One entry as read back: (name, mode, nlink, rdev, data).
    type Parsed = (String, u32, u32, (u32, u32), Vec<u8>);

    /// Reads an archive back with the `cpio` crate's reader; checks times, owners and the
    /// padding after the trailer.
    fn read_cpio(buf: &[u8]) -> Vec<Parsed> {
        let mut out = vec![];
        let mut rest = buf;
        loop {
            let mut r = cpio::NewcReader::new(rest).unwrap();
            let e = r.entry();
            if e.is_trailer() {
                let rest = r.finish().unwrap();
                assert!(rest.iter().all(|&x| x == 0), "garbage after the trailer");
                assert_eq!(buf.len() % 512, 0);
                return out;
            }
            assert_eq!((e.mtime(), e.uid(), e.gid()), (0, 0, 0));
            let (name, mode, nlink, rdev) =
                (e.name().to_string(), e.mode(), e.nlink(), (e.rdev_major(), e.rdev_minor()));
            let mut data = vec![];
            std::io::Read::read_to_end(&mut r, &mut data).unwrap();
            rest = r.finish().unwrap();
            out.push((name, mode, nlink, rdev, data));
        }
    }

    #[test]
    fn cpio_round_trip() {
        let mut c = Cpio::default();
        c.file("init", 0o755, b"#!/bin/sh\n".to_vec());
        c.file("lib/modules/vfio.ko", 0o644, vec![1, 2, 3, 4, 5]);
        c.file("etc/a", 0o600, vec![]);
        c.symlink("bin/sh", "/bin/busybox");
        c.char_dev("dev/console", 0o600, 5, 1);
        c.dir("tmp", 0o1777);
        let mut buf = vec![];
        c.write_to(&mut buf).unwrap();
        let got = read_cpio(&buf);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "etc",
                "etc/a",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/vfio.ko",
                "tmp"
            ]
        );
        let get = |n: &str| got.iter().find(|e| e.0 == n).unwrap().clone();
        assert_eq!(get("init").1, 0o100755);
        assert_eq!(get("init").4, b"#!/bin/sh\n");
        assert_eq!(get("lib/modules/vfio.ko").4, [1, 2, 3, 4, 5]);
        assert_eq!(get("etc/a").1, 0o100600);
        assert_eq!(get("bin/sh").1, 0o120777);
        assert_eq!(get("bin/sh").4, b"/bin/busybox");
        assert_eq!(get("dev/console").1, 0o020600);
        assert_eq!(get("dev/console").3, (5, 1));
        assert_eq!(get("lib").1, 0o040755);
        assert_eq!(get("lib").2, 2);
        assert_eq!(get("tmp").1, 0o041777);
        // Deterministic: the same content gives the same bytes.
        let mut again = vec![];
        c.write_to(&mut again).unwrap();
        assert_eq!(buf, again);
    }

    #[test]
    fn nested_paths_get_their_parent_folders() {
        let mut c = Cpio::default();
        c.file("a/b/c.txt", 0o644, b"hello".to_vec());
        c.symlink("a/link", "b/c.txt");
        let mut buf = vec![];
        c.write_to(&mut buf).unwrap();
        let got = read_cpio(&buf);
        let names: Vec<&str> = got.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["a", "a/b", "a/b/c.txt", "a/link"]);
        assert_eq!((got[2].4.as_slice(), got[3].4.as_slice()), (&b"hello"[..], &b"b/c.txt"[..]));
    }
}
