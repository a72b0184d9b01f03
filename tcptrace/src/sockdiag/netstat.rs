//! A network namespace's `TcpExt` counters, from `/proc/net/netstat` as the
//! calling thread sees it (`/proc/thread-self/net` follows the thread's
//! namespace, so a worker that entered another namespace reads that one's).
//! Its layout: [`tcptrace_common::netstat`].

/// The `TcpExt` counters about handshakes that no socket holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpExt {
    pub syncookies_sent: u64,
    pub syncookies_failed: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

/// The calling thread's namespace's netstat, opened to be read again and
/// again ([`read_from`]) from any thread: the file stays bound to the
/// namespace it was opened in.
pub(super) fn open_own() -> Option<std::fs::File> {
    std::fs::File::open("/proc/thread-self/net/netstat").ok()
}

/// The counters of a netstat file opened with [`open_own`], read afresh.
pub(super) fn read_from(file: &std::fs::File) -> Option<TcpExt> {
    use std::os::unix::fs::FileExt;
    let mut text = Vec::with_capacity(8192);
    let mut chunk = [0u8; 4096];
    loop {
        let n = file.read_at(&mut chunk, text.len() as u64).ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    parse(std::str::from_utf8(&text).ok()?)
}

/// The `TcpExt` group of a netstat file; `None` without one.
pub(super) fn parse(text: &str) -> Option<TcpExt> {
    let mut out = TcpExt::default();
    for (name, v) in tcptrace_common::netstat::tcp_ext(text)? {
        match name {
            "SyncookiesSent" => out.syncookies_sent = v,
            "SyncookiesFailed" => out.syncookies_failed = v,
            "ListenOverflows" => out.listen_overflows = v,
            "ListenDrops" => out.listen_drops = v,
            _ => {}
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_found_by_name() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed Other ListenOverflows ListenDrops\n\
                    TcpExt: 4 1 2 99 16 17\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        assert_eq!(
            parse(text),
            Some(TcpExt {
                syncookies_sent: 4,
                syncookies_failed: 2,
                listen_overflows: 16,
                listen_drops: 17,
            })
        );
        assert_eq!(parse("IpExt: A\nIpExt: 1\n"), None);
        // A values line cut short keeps what it has.
        assert_eq!(
            parse("TcpExt: SyncookiesSent ListenDrops\nTcpExt: 3\n").map(|t| t.syncookies_sent),
            Some(3)
        );
    }

    #[test]
    fn this_namespace_has_them() {
        let file = open_own().expect("/proc/thread-self/net/netstat");
        assert!(read_from(&file).is_some(), "parsed");
        // Read again from the same handle: the counters afresh.
        assert!(read_from(&file).is_some(), "read twice");
    }
}
