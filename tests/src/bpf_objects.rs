//! The BPF programs and maps a process holds, as the kernel names them:
//! what a tracer leaves running on the host, read from outside it.

use std::process::Command;

/// A kernel object a process holds a descriptor of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: u32,
    pub name: String,
}

/// Kind of object: the fdinfo field that names its id, and bpftool's word.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Program,
    Map,
}

impl Kind {
    fn id_field(self) -> &'static str {
        match self {
            Kind::Program => "prog_id:",
            Kind::Map => "map_id:",
        }
    }

    fn bpftool(self) -> &'static str {
        match self {
            Kind::Program => "prog",
            Kind::Map => "map",
        }
    }
}

/// Every BPF object of `kind` process `pid` holds, each once, with the
/// name the kernel keeps (from `bpftool`, installed by `cargo xtask setup`).
pub fn held_by(pid: u32, kind: Kind) -> Vec<Held> {
    let mut held: Vec<Held> = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix(kind.id_field()))
            .and_then(|id| id.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if held.iter().any(|h| h.id == id) {
            continue;
        }
        let show = Command::new("bpftool")
            .args([kind.bpftool(), "show", "id", &id.to_string(), "-j"])
            .output()
            .expect("bpftool (installed by `cargo xtask setup`)");
        let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or_default();
        let name = show["name"].as_str().unwrap_or_default().to_owned();
        held.push(Held { id, name });
    }
    held
}

/// The 8-byte keys of map `id`, as bpftool dumps them (hex bytes).
pub fn u64_keys_of(id: u32) -> Vec<u64> {
    let dump = Command::new("bpftool")
        .args(["map", "dump", "id", &id.to_string(), "-j"])
        .output()
        .unwrap();
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&dump.stdout).unwrap();
    entries
        .iter()
        .map(|e| {
            let bytes: Vec<u8> = e["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
                })
                .collect();
            u64::from_le_bytes(bytes.try_into().unwrap())
        })
        .collect()
}
