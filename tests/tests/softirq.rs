//! A softirq is not the process it interrupted. On x86-64 an interrupt
//! that arrives while a process runs in user mode is handled, its softirqs
//! included, on that process's own kernel stack (only interrupts from kernel
//! mode switch to the IRQ stack), so "which stack am I on" cannot tell a
//! softirq from the process; tcptrace must not blame that process for what
//! a timer did to someone else's socket.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use tcptrace::{
    decode::{Context, TcpState},
    tracker::Role,
};
use tcptrace_tests::{json_run::KillOnDrop, netns::Netns, reserve_port, trace};

/// Pins the calling thread to CPU 0.
fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

#[test]
fn a_syn_timer_that_fires_while_another_process_spins_in_user_mode_is_not_blamed_on_it() {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let (_reserved, port) = reserve_port(ip);
    let mut trace = trace(port);
    // A process in user mode all the time, on CPU 0, for at most 20 s.
    let spinner = KillOnDrop(
        Command::new("python3")
            .args([
                "-c",
                "import os, time\n\
                 os.sched_setaffinity(0, {0})\n\
                 end = time.monotonic() + 20\n\
                 while time.monotonic() < end: pass\n",
            ])
            .spawn()
            .unwrap(),
    );
    let spinner_pid = spinner.0.id();
    // Its connects give up after one SYN retransmit, all of it on timers.
    let ns = Netns::dropping_outgoing_syns("spinner", port);
    let target = SocketAddr::new(ip, port);
    // The connecting thread sleeps in connect() on CPU 0: its SYN timer is
    // armed there and fires while the spinner has the CPU.
    let err = ns.enter(move || {
        pin_to_cpu0();
        TcpStream::connect_timeout(&target, Duration::from_secs(9)).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let (c, _) = trace.wait_life_where("the client that gave up", &[port], |l| {
        l.role == Role::Client && l.remote == target
    });

    let give_up = c
        .steps
        .iter()
        .find(|s| s.old == TcpState::SynSent && s.new == TcpState::Close)
        .unwrap_or_else(|| panic!("no SYN_SENT→CLOSE: {c:#?}"));
    assert!(
        matches!(give_up.context, Context::Softirq { .. }),
        "the timer's give-up must be softirq, not a process: {give_up:#?}"
    );
    for step in &c.steps {
        if let Context::Process(p) = &step.context {
            assert_ne!(
                p.tgid, spinner_pid,
                "the spinner was blamed for {:?}→{:?}: {c:#?}",
                step.old, step.new
            );
        }
    }
}
