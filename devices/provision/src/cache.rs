//! Where the testbed keeps what it builds or downloads: outside the clone, under the user's
//! cache directory, in folders keyed by content hashes.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// `$TESTBED_CACHE`, else `$XDG_CACHE_HOME/enso-testbed`, else `~/.cache/enso-testbed`.
pub fn root() -> PathBuf {
    if let Some(p) = std::env::var_os("TESTBED_CACHE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("enso-testbed")
}

/// A running SHA-256 over named inputs; `hex16()` gives a short cache key.
#[derive(Default)]
pub struct KeyHasher(Sha256);

impl KeyHasher {
    /// Adds a named byte string.
    pub fn add(&mut self, name: &str, bytes: &[u8]) -> &mut Self {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// Adds a file's name and contents.
    pub fn add_file(&mut self, path: &Path) -> std::io::Result<&mut Self> {
        let bytes = std::fs::read(path)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(self.add(&name, &bytes))
    }

    /// The first 16 hex digits of the digest.
    pub fn hex16(&self) -> String {
        let d = self.0.clone().finalize();
        d.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

/// The workspace root (where `Cargo.toml` with `[workspace]` lives), found from the
/// executable's location or the current directory; `$TESTBED_ROOT` overrides.
pub fn workspace_root() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TESTBED_ROOT") {
        return Ok(PathBuf::from(p));
    }
    let mut starts = vec![];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(std::env::current_dir()?);
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    for start in starts {
        for dir in start.ancestors() {
            let toml = dir.join("Cargo.toml");
            if toml.is_file()
                && std::fs::read_to_string(&toml).is_ok_and(|s| s.contains("[workspace]"))
                && dir.join("qemu-patches").is_dir()
            {
                return Ok(dir.to_path_buf());
            }
        }
    }
    anyhow::bail!("cannot find the testbed source tree; run from inside it or set TESTBED_ROOT")
}
