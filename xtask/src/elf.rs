//! Just enough ELF64 reading to tell which shared libraries a binary needs
//! and where it looks for them (DT_NEEDED, DT_RUNPATH/DT_RPATH).

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

#[derive(Debug, Default)]
pub struct Dynamic {
    pub needed: Vec<String>,
    /// DT_RUNPATH and DT_RPATH entries, split on ':'.
    pub search_path: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    if len > 64 << 20 {
        bail!("unreasonable ELF table size {len}");
    }
    let mut buf = vec![0u8; usize::try_from(len)?];
    file.read_exact_at(&mut buf, offset)
        .with_context(|| format!("reading {len} bytes at {offset}"))?;
    Ok(buf)
}

/// Reads the dynamic section of a little-endian ELF64 file.
pub fn dynamic(path: &Path) -> Result<Dynamic> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let ehdr = read_at(&file, 0, 64).context("reading the ELF header")?;
    if &ehdr[..4] != b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        bail!("{} is not a little-endian ELF64 file", path.display());
    }
    let phoff = u64_at(&ehdr, 0x20);
    let phentsize = u64::from(u16_at(&ehdr, 0x36));
    let phnum = u64::from(u16_at(&ehdr, 0x38));
    if phentsize < 56 {
        bail!("bad program header size {phentsize}");
    }
    let phdrs = read_at(&file, phoff, phentsize * phnum)?;

    // (vaddr, offset, filesz) of each PT_LOAD, and the PT_DYNAMIC's extent.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..usize::try_from(phnum)? {
        let p = &phdrs[i * usize::try_from(phentsize)?..];
        let (p_type, p_offset, p_vaddr, p_filesz) =
            (u32_at(p, 0), u64_at(p, 8), u64_at(p, 16), u64_at(p, 32));
        match p_type {
            PT_LOAD => loads.push((p_vaddr, p_offset, p_filesz)),
            PT_DYNAMIC => dynamic = Some((p_offset, p_filesz)),
            _ => {}
        }
    }
    let Some((dyn_off, dyn_size)) = dynamic else {
        return Ok(Dynamic::default()); // statically linked
    };
    let entries = read_at(&file, dyn_off, dyn_size)?;

    let (mut strtab, mut strsz) = (None, None);
    let mut needed = Vec::new();
    let mut paths = Vec::new();
    for e in entries.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RPATH | DT_RUNPATH => paths.push(val),
            _ => {}
        }
    }
    let (Some(strtab), Some(strsz)) = (strtab, strsz) else {
        bail!("dynamic section without a string table");
    };
    let str_off = loads
        .iter()
        .find(|(vaddr, _, filesz)| (*vaddr..vaddr + filesz).contains(&strtab))
        .map(|(vaddr, off, _)| strtab - vaddr + off)
        .context("the dynamic string table is outside every loaded segment")?;
    let strings = read_at(&file, str_off, strsz)?;
    let string = |off: u64| -> Result<String> {
        let start = usize::try_from(off)?;
        let rest = strings.get(start..).context("string offset out of range")?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    };

    let mut out = Dynamic::default();
    for off in needed {
        out.needed.push(string(off)?);
    }
    for off in paths {
        out.search_path
            .extend(string(off)?.split(':').map(str::to_owned));
    }
    Ok(out)
}
