//! What the builder needs to know of ELF files, read with the `object` crate.

use anyhow::{bail, Result};
use object::read::elf::{ElfFile64, ProgramHeader};
use object::{Architecture, Endianness, Object, ObjectSection};

/// The contents of the section `name` of an ELF file (e.g. a module's `.modinfo`).
pub(crate) fn section<'a>(elf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let file = ElfFile64::<Endianness>::parse(elf).ok()?;
    file.section_by_name(name)?.data().ok()
}

/// Whether `bytes` is a 64-bit ELF file (what the kernel payload decompresses to).
pub(crate) fn is_elf64(bytes: &[u8]) -> bool {
    matches!(object::FileKind::parse(bytes), Ok(object::FileKind::Elf64))
}

/// Fails unless `bin` is an x86-64 ELF executable without a dynamic loader (static or
/// static-pie), which is what runs in the busybox-only initramfs.
pub(crate) fn check_static(bin: &[u8]) -> Result<()> {
    let Ok(file) = ElfFile64::<Endianness>::parse(bin) else {
        bail!("not an x86-64 ELF executable");
    };
    if file.architecture() != Architecture::X86_64 || !file.is_little_endian() {
        bail!("not an x86-64 ELF executable");
    }
    let endian = file.endian();
    if file.elf_program_headers().iter().any(|ph| ph.p_type(endian) == object::elf::PT_INTERP) {
        bail!("dynamically linked (has an ELF interpreter)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_elf() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_elf64(&me));
        assert!(section(&me, ".text").is_some_and(|t| !t.is_empty()));
        assert!(section(&me, ".no-such-section").is_none());
        // Test binaries are linked dynamically (unless the target is static by default).
        if me.windows(b"ld-linux-x86-64.so.2".len()).any(|w| w == b"ld-linux-x86-64.so.2") {
            assert!(check_static(&me).unwrap_err().to_string().contains("dynamically linked"));
        }
        assert!(check_static(b"#!/bin/sh\n").is_err());
        assert!(section(b"\x7fELF", ".modinfo").is_none());
    }
}
