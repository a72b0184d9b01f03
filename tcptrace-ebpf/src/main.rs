//! tcptrace's kernel side: small and dumb on purpose.
//!
//! Each program copies the fields of one tracepoint into an [`Event`] reserved
//! in the ring buffer, stamps the on-CPU task and the socket's owner, applies
//! the user's filters, and submits. Every offset comes from [`CONFIG`], which
//! the loader fills in from the running kernel's format files and BTF; all
//! interpretation happens in userspace.
// Host builds (clippy, check) see an ordinary binary; the real one is built
// for bpfel-unknown-none by tcptrace's build.rs.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_buf,
    },
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tcptrace_common::{
    ABSENT, COMM_LEN, Config, DEFAULT_RING_BYTES, Event, RECORD_MAX, SockFields, Task, counter,
    filter, flag, kind,
};

const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_SYN_SENT: u8 = 2;
const TCP_LISTEN: u8 = 10;
const TCP_SYN_RECV: u8 = 3;
// bpf_ringbuf_{submit,reserve} flags and bpf_ringbuf_query's BPF_RB_AVAIL_DATA.
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Filled in by the loader (`EbpfLoader::set_global`) before loading.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::EMPTY;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// `counter::*` per CPU: produced = received + lost holds exactly.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Owner of each socket, captured in process context at connect and listen.
#[map]
static OWNERS: LruHashMap<u64, Task> = LruHashMap::with_max_entries(65536, 0);

/// Owner of each listening port (key: family << 16 | port), inherited by the
/// children the listener accepts.
#[map]
static LISTENERS: LruHashMap<u32, Task> = LruHashMap::with_max_entries(4096, 0);

/// Process ids (tgids) to trace when `filter::PID` is on.
#[map]
static PID_FILTER: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// Per CPU: events left until the next ring-buffer backlog check.
#[map]
static QUERY_COUNTDOWN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Non-zero while this CPU runs a softirq: the on-CPU task is then a bystander.
#[map]
static IN_SOFTIRQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn config() -> &'static Config {
    // SAFETY: CONFIG is written once by the loader before load; the volatile
    // read stops the compiler from folding the defaults in.
    unsafe { core::ptr::read_volatile(&&CONFIG) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *slot += 1 };
    }
}

/// A tracepoint record copied with one helper call: field reads are then
/// plain loads instead of one bpf_probe_read each.
struct RecordCopy {
    bytes: [u8; RECORD_MAX],
}

impl RecordCopy {
    #[inline(always)]
    fn of(ctx: &TracePointContext, len: u16) -> Option<RecordCopy> {
        let mut copy = RecordCopy {
            bytes: [0; RECORD_MAX],
        };
        let len = (len as usize).min(RECORD_MAX);
        let dst = copy.bytes.get_mut(..len)?;
        // SAFETY: ctx points at the tracepoint's record of at least `len`
        // bytes (the loader took len from its format); the read is checked.
        unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, dst).ok()? };
        Some(copy)
    }

    #[inline(always)]
    fn get<T: Copy>(&self, offset: u16) -> Option<T> {
        let start = offset as usize;
        let bytes = self.bytes.get(start..start + core::mem::size_of::<T>())?;
        // SAFETY: in bounds (checked above); T is plain data read unaligned.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const T) })
    }
}

#[inline(always)]
fn cgroup_id() -> u64 {
    // SAFETY: plain helper call, valid in tracepoint programs.
    unsafe { bpf_get_current_cgroup_id() }
}

#[inline(always)]
fn in_softirq() -> bool {
    IN_SOFTIRQ.get(0).map(|depth| *depth != 0).unwrap_or(false)
}

/// Does a task pass the user's process filters?
#[inline(always)]
fn task_matches(filter: &tcptrace_common::Filter, task: &Task) -> bool {
    if filter.flags & filter::PID != 0 {
        // SAFETY: read-only lookup of a plain value.
        if unsafe { PID_FILTER.get(task.tgid) }.is_none() {
            return false;
        }
    }
    if filter.flags & filter::COMM != 0 && task.comm != filter.comm {
        return false;
    }
    if filter.flags & filter::CGROUP != 0 && task.cgroup_id != filter.cgroup_id {
        return false;
    }
    true
}

/// The on-CPU task, with its cgroup id when the cgroup filter needs it.
#[inline(always)]
fn context_for_filter(filter: &tcptrace_common::Filter, task: &Task) -> Task {
    let mut task = *task;
    if filter.flags & filter::CGROUP != 0 && task.cgroup_id == 0 {
        task.cgroup_id = cgroup_id();
    }
    task
}

#[inline(always)]
fn process_filter_on(filter: &tcptrace_common::Filter) -> bool {
    filter.flags & (filter::PID | filter::COMM | filter::CGROUP) != 0
}

/// Process filters judge the socket's owner when it is known; otherwise the
/// task that caused the event, when it ran in process context.
#[inline(always)]
fn socket_event_passes(event: &Event) -> bool {
    let filter = &config().filter;
    if filter.flags & filter::FAMILY != 0 && event.family != filter.family {
        return false;
    }
    if filter.flags & (filter::PORT | filter::LPORT | filter::RPORT) != 0 {
        // Each port filter that is on must hold.
        if filter.flags & filter::PORT != 0
            && event.sport != filter.port
            && event.dport != filter.port
        {
            return false;
        }
        if filter.flags & filter::LPORT != 0 && event.sport != filter.lport {
            return false;
        }
        if filter.flags & filter::RPORT != 0 && event.dport != filter.rport {
            return false;
        }
    }
    if !process_filter_on(filter) {
        return true;
    }
    if event.flags & flag::OWNER_KNOWN != 0 {
        task_matches(filter, &event.owner)
    } else {
        event.flags & flag::SOFTIRQ == 0
            && task_matches(filter, &context_for_filter(filter, &event.context))
    }
}

/// Reads family, ports and addresses, in either layout the kernel uses.
#[inline(always)]
fn read_endpoints(rec: &RecordCopy, fields: &SockFields, event: &mut Event) {
    if fields.saddr_sockaddr != ABSENT {
        // struct sockaddr_in / sockaddr_in6: family, then the port in
        // network order, then the address (at 4 for v4, 8 for v6).
        let family: u16 = rec.get(fields.saddr_sockaddr).unwrap_or(0);
        event.family = family;
        let sport: u16 = rec.get(fields.saddr_sockaddr + 2).unwrap_or(0);
        let dport: u16 = rec.get(fields.daddr_sockaddr + 2).unwrap_or(0);
        event.sport = u16::from_be(sport);
        event.dport = u16::from_be(dport);
        if family == AF_INET6 {
            event.saddr = rec.get(fields.saddr_sockaddr + 8).unwrap_or([0; 16]);
            event.daddr = rec.get(fields.daddr_sockaddr + 8).unwrap_or([0; 16]);
        } else {
            let s: [u8; 4] = rec.get(fields.saddr_sockaddr + 4).unwrap_or([0; 4]);
            let d: [u8; 4] = rec.get(fields.daddr_sockaddr + 4).unwrap_or([0; 4]);
            event.saddr[..4].copy_from_slice(&s);
            event.daddr[..4].copy_from_slice(&d);
        }
        return;
    }
    event.family = rec.get(fields.family).unwrap_or(0);
    event.sport = rec.get(fields.sport).unwrap_or(0);
    event.dport = rec.get(fields.dport).unwrap_or(0);
    if event.family == AF_INET6 {
        event.saddr = rec.get(fields.saddr_v6).unwrap_or([0; 16]);
        event.daddr = rec.get(fields.daddr_v6).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = rec.get(fields.saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = rec.get(fields.daddr).unwrap_or([0; 4]);
        event.saddr[..4].copy_from_slice(&s);
        event.daddr[..4].copy_from_slice(&d);
    }
}

/// Events between two backlog checks, per CPU.
const QUERY_EVERY: u32 = 32;

/// Copies the event (built on the stack: 144 bytes, well inside the 512-byte
/// stack) into the ring with one helper call.
#[inline(always)]
fn submit(event: &Event) {
    count(counter::PRODUCED);
    // Waking the reader per event costs more than the event itself: wake it
    // only when a backlog builds (its timer drains the rest). Even the
    // backlog check is a helper call, so it runs every QUERY_EVERY events.
    let mut wake = BPF_RB_NO_WAKEUP;
    if let Some(countdown) = QUERY_COUNTDOWN.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe {
            if *countdown == 0 {
                *countdown = QUERY_EVERY - 1;
                if EVENTS.query(BPF_RB_AVAIL_DATA) >= config().wakeup_bytes {
                    wake = BPF_RB_FORCE_WAKEUP;
                }
            } else {
                *countdown -= 1;
            }
        }
    }
    if EVENTS.output::<Event>(event, wake).is_err() {
        count(counter::LOST);
    }
}

/// The event's common part. The on-CPU task's name is read only in process
/// context: in softirq that task is a bystander, and every helper call
/// counts at hundreds of thousands of events a second.
#[inline(always)]
fn base_event(event_kind: u8) -> Event {
    let softirq = in_softirq();
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut event = Event {
        kind: event_kind,
        // SAFETY: plain helper calls.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        cpu: unsafe { bpf_get_smp_processor_id() },
        context: Task {
            pid: pid_tgid as u32,
            tgid: (pid_tgid >> 32) as u32,
            // Filled in only where needed (owners, the cgroup filter).
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        },
        ..Event::default()
    };
    if softirq {
        event.flags |= flag::SOFTIRQ;
    } else {
        event.context.comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    }
    event
}

#[inline(always)]
fn attach_owner(event: &mut Event) {
    // SAFETY: read-only lookup; the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(event.skaddr) } {
        event.owner = *owner;
        event.flags |= flag::OWNER_KNOWN;
    }
}

fn listener_key(family: u16, port: u16) -> u32 {
    ((family as u32) << 16) | port as u32
}

/// Keeps the owner maps current; runs before filtering so that ownership is
/// known even for sockets whose early events were filtered out.
#[inline(always)]
fn track_owner(event: &mut Event) {
    let (old, new) = (event.oldstate, event.newstate);
    let process_context = event.flags & flag::SOFTIRQ == 0;
    if old == TCP_CLOSE && (new == TCP_SYN_SENT || new == TCP_LISTEN) && process_context {
        // connect() and listen() run in the caller's context.
        event.context.cgroup_id = cgroup_id();
        let _ = OWNERS.insert(event.skaddr, event.context, 0);
        if new == TCP_LISTEN {
            let key = listener_key(event.family, event.sport);
            let _ = LISTENERS.insert(key, event.context, 0);
        }
    } else if old == TCP_LISTEN && new == TCP_SYN_RECV {
        // A child socket: it belongs to whoever owns the listening port.
        let key = listener_key(event.family, event.sport);
        // SAFETY: read-only lookup; the value is copied out at once.
        if let Some(owner) = unsafe { LISTENERS.get(key) } {
            let owner = *owner;
            let _ = OWNERS.insert(event.skaddr, owner, 0);
        } else {
            // Owner unknown (listener older than the tracer): drop whatever
            // an earlier socket at this address left, never misattribute.
            let _ = OWNERS.remove(event.skaddr);
        }
    } else if old == TCP_LISTEN && new == TCP_CLOSE {
        let key = listener_key(event.family, event.sport);
        let _ = LISTENERS.remove(key);
    }
    attach_owner(event);
}

/// Bytes received but not yet read: `rcv_nxt - copied_seq` of the tcp_sock,
/// at offsets the loader read from BTF (0 = unknown, left out).
#[inline(always)]
fn read_unread(event: &mut Event) {
    let offsets = &config().offsets;
    if offsets.tcp_rcv_nxt == 0 || offsets.tcp_copied_seq == 0 || event.skaddr == 0 {
        return;
    }
    let base = event.skaddr as *const u8;
    // SAFETY: bpf_probe_read_kernel checks the address.
    let rcv_nxt = unsafe {
        bpf_probe_read_kernel(base.wrapping_add(offsets.tcp_rcv_nxt as usize) as *const u32)
    };
    let copied = unsafe {
        bpf_probe_read_kernel(base.wrapping_add(offsets.tcp_copied_seq as usize) as *const u32)
    };
    if let (Ok(rcv_nxt), Ok(copied)) = (rcv_nxt, copied) {
        event.unread = rcv_nxt.wrapping_sub(copied);
        event.flags |= flag::UNREAD_VALID;
    }
}

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let fields = &config().set_state;
    let Some(rec) = RecordCopy::of(&ctx, fields.record_len) else {
        return 0;
    };
    if rec.get::<u16>(fields.protocol) != Some(IPPROTO_TCP) {
        count(counter::NOT_TCP);
        return 0;
    }
    let mut event = base_event(kind::STATE);
    event.skaddr = rec.get::<u64>(fields.skaddr).unwrap_or(0);
    event.oldstate = rec.get::<i32>(fields.oldstate).unwrap_or(0) as u8;
    event.newstate = rec.get::<i32>(fields.newstate).unwrap_or(0) as u8;
    read_endpoints(&rec, fields, &mut event);
    track_owner(&mut event);
    if event.newstate == TCP_CLOSE {
        read_unread(&mut event);
    }
    if socket_event_passes(&event) {
        submit(&event);
    } else {
        count(counter::FILTERED);
    }
    0
}

/// The reset, retransmit and destroy tracepoints share one shape.
#[inline(always)]
fn sock_event(ctx: &TracePointContext, fields: &SockFields, event_kind: u8) -> u32 {
    let Some(rec) = RecordCopy::of(ctx, fields.record_len) else {
        return 0;
    };
    let mut event = base_event(event_kind);
    event.skaddr = rec.get::<u64>(fields.skaddr).unwrap_or(0);
    if let Some(state) = rec.get::<i32>(fields.state) {
        event.newstate = state as u8;
    }
    if let Some(reason) = rec.get::<u32>(fields.reason) {
        event.value = reason;
        event.flags |= flag::REASON_VALID;
    } else if let Some(err) = rec.get::<i32>(fields.err) {
        event.value = err as u32;
    }
    if let Some(cookie) = rec.get::<u64>(fields.cookie) {
        event.aux = cookie;
    }
    read_endpoints(&rec, fields, &mut event);
    // OWNERS is an LRU: entries of destroyed sockets age out, and a reused
    // address gets a fresh owner when its new life starts (track_owner).
    attach_owner(&mut event);
    if socket_event_passes(&event) {
        submit(&event);
    } else {
        count(counter::FILTERED);
    }
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    sock_event(&ctx, &config().send_reset, kind::SEND_RESET)
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    sock_event(&ctx, &config().receive_reset, kind::RECEIVE_RESET)
}

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    sock_event(&ctx, &config().retransmit_skb, kind::RETRANSMIT_SKB)
}

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    sock_event(&ctx, &config().retransmit_synack, kind::RETRANSMIT_SYNACK)
}

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    sock_event(&ctx, &config().destroy_sock, kind::DESTROY_SOCK)
}

/// A task exits: its sockets are closed after this, in its own context.
#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let config = config();
    let mut event = base_event(kind::PROCESS_EXIT);
    if process_filter_on(&config.filter)
        && !task_matches(
            &config.filter,
            &context_for_filter(&config.filter, &event.context),
        )
    {
        count(counter::FILTERED);
        return 0;
    }
    let Some(rec) = RecordCopy::of(&ctx, config.process_exit.record_len) else {
        return 0;
    };
    if rec.get::<u8>(config.process_exit.group_dead).unwrap_or(0) != 0 {
        event.flags |= flag::GROUP_DEAD;
    }
    if config.offsets.task_exit_code != 0 {
        // SAFETY: plain helper call; the read is checked by the kernel.
        let task = unsafe { bpf_get_current_task() } as *const u8;
        let code = unsafe {
            bpf_probe_read_kernel(
                task.wrapping_add(config.offsets.task_exit_code as usize) as *const i32
            )
        };
        if let Ok(code) = code {
            event.value = code as u32;
            event.flags |= flag::EXIT_CODE_VALID;
        }
    }
    submit(&event);
    0
}

/// A signal that kills by default is generated: remember who sent it.
#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let config = config();
    let Some(rec) = RecordCopy::of(&ctx, config.signal.record_len) else {
        return 0;
    };
    let sig = rec.get::<i32>(config.signal.sig).unwrap_or(0);
    if !(1..64).contains(&sig) || config.signal_mask & (1u64 << sig) == 0 {
        return 0;
    }
    let target = rec.get::<i32>(config.signal.pid).unwrap_or(0) as u32;
    if config.filter.flags & filter::PID != 0 {
        // SAFETY: read-only lookup of a plain value.
        if unsafe { PID_FILTER.get(target) }.is_none() {
            count(counter::FILTERED);
            return 0;
        }
    }
    let mut event = base_event(kind::SIGNAL);
    event.value = sig as u32;
    // `result` 0 means delivered; others mean ignored, already pending, ...
    let result = rec.get::<i32>(config.signal.result).unwrap_or(0) as u32;
    event.aux = (target as u64) | ((result as u64) << 32);
    submit(&event);
    0
}

#[tracepoint]
pub fn softirq_entry(_ctx: TracePointContext) -> u32 {
    if let Some(depth) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *depth = 1 };
    }
    0
}

#[tracepoint]
pub fn softirq_exit(_ctx: TracePointContext) -> u32 {
    if let Some(depth) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *depth = 0 };
    }
    0
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {
    eprintln!("tcptrace-ebpf is a kernel program: tcptrace's build.rs builds it for BPF");
    std::process::exit(1);
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
