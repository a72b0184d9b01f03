//! The layout of `/proc/net/netstat`, read by the loader's sampler and by
//! the bench: per group, a line of counter names, then a line of their
//! values (`TcpExt: SyncookiesSent …`, then `TcpExt: 0 …`). Counters are
//! found by name, so their order and any the kernel adds do not matter.

/// The `TcpExt` counters in netstat's `text`, as (name, value); `None`
/// without a `TcpExt` group. A value that is not a number is left out.
pub fn tcp_ext(text: &str) -> Option<impl Iterator<Item = (&str, u64)>> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    Some(
        names
            .zip(values)
            .filter_map(|(name, value)| Some((name, value.parse().ok()?))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_pair_with_their_names_in_the_tcp_ext_group_only() {
        let text = "TcpExt: SyncookiesSent TW Odd TCPTimeWaitOverflow\n\
                    TcpExt: 4 95859727 x 165326164\n\
                    IpExt: InNoRoutes TCPTimeWaitOverflow\n\
                    IpExt: 0 7\n";
        let find = |name: &str| {
            tcp_ext(text)
                .unwrap()
                .find(|&(n, _)| n == name)
                .map(|(_, v)| v)
        };
        assert_eq!(find("TCPTimeWaitOverflow"), Some(165_326_164));
        assert_eq!(find("SyncookiesSent"), Some(4));
        assert_eq!(find("Odd"), None);
        assert!(tcp_ext("IpExt: A\nIpExt: 1\n").is_none());
        assert!(tcp_ext("").is_none());
    }
}
