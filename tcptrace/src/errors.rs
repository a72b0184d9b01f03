//! Errors as a person reads them: each cause once, and what to do when the
//! cause is one people can fix.

/// The error and its causes joined by ": ", skipping a cause whose text its
/// parent already includes (aya's errors repeat their sources), with a hint
/// for running out of file descriptors.
pub fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !previous.is_empty() && previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    let out_of_fds = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| code == libc::EMFILE || code == libc::ENFILE)
    }) || out.contains("Too many open files");
    if out_of_fds {
        out.push_str(&format!(
            "\n  tcptrace ran out of file descriptors (limit {}): it needs about 64 \
             (one per kernel map and program, its threads, the socket listing); \
             raise it with `ulimit -n 1024`",
            nofile_limit()
        ));
    }
    out
}

fn nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("map error: failed to create map `X`: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_once_and_a_hint_for_descriptors() {
        let io = std::io::Error::from_raw_os_error(libc::EMFILE);
        let e = anyhow::Error::new(Repeats(io)).context("starting the tracer");
        let text = describe(&e);
        assert_eq!(text.matches("Too many open files").count(), 1, "{text}");
        assert!(text.starts_with("starting the tracer: map error"), "{text}");
        assert!(text.contains("ulimit -n"), "{text}");
        let plain = anyhow::anyhow!("no such thing").context("reading");
        assert_eq!(describe(&plain), "reading: no such thing");
    }
}
