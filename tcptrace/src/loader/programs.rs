//! Loading and attaching the kernel programs: the raw tracepoints, and
//! the accept program on the syscall tracepoints.

use aya::{
    Ebpf,
    programs::{ProgramError, RawTracePoint, TracePoint},
};

use super::LoadError;
use crate::kernel::{
    self,
    accept::{ACCEPT_TRACEPOINTS, AcceptUnavailable},
};

fn raw_tracepoint<'a>(
    ebpf: &'a mut Ebpf,
    program: &'static str,
) -> Result<&'a mut RawTracePoint, LoadError> {
    Ok(ebpf
        .program_mut(program)
        .ok_or(LoadError::MissingProgram(program))?
        .try_into()?)
}

pub(super) fn load(ebpf: &mut Ebpf, tp: &kernel::Tracepoint) -> Result<(), LoadError> {
    for program in tp.programs() {
        raw_tracepoint(ebpf, program)?
            .load()
            .map_err(|e| load_error(program, e))?;
    }
    Ok(())
}

fn load_error(program: &'static str, e: ProgramError) -> LoadError {
    match e {
        // Out of descriptors is not the verifier's verdict.
        ProgramError::LoadError { io_error, .. }
            if matches!(io_error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) =>
        {
            LoadError::Descriptors(io_error)
        }
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => LoadError::Verifier {
            program: program.to_owned(),
            io_error,
            log: verifier_log.to_string(),
        },
        other => LoadError::Program(other),
    }
}

/// The kernel program that follows accept(2).
const ACCEPT_PROGRAM: &str = "sys_exit_accept";

/// Where accept's return value is, or why accept(2) cannot be followed
/// (which is never fatal: accepted sockets then keep their listener's
/// owner, and the header and the log say so).
pub(super) fn accept_ret_offset(wanted: bool, layout_ok: bool) -> Result<u32, AcceptUnavailable> {
    if !wanted {
        return Err(AcceptUnavailable::Disabled);
    }
    if !layout_ok {
        return Err(AcceptUnavailable::Layout);
    }
    let tracefs = kernel::accept::tracefs()?;
    let mut offsets = ACCEPT_TRACEPOINTS
        .iter()
        .map(|name| kernel::accept::ret_offset(&tracefs, name));
    let first = offsets.next().expect("two tracepoints")?;
    for other in offsets {
        // One program for both: their records must agree.
        if other? != first {
            return Err(AcceptUnavailable::Layout);
        }
    }
    Ok(first)
}

/// Loads the accept program (a verifier rejection is fatal, like any
/// program's) and attaches it to both syscalls (a failure there is not:
/// it is returned for the caller to report).
pub(super) fn load_accept(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    accept_program(ebpf)?
        .load()
        .map_err(|e| load_error(ACCEPT_PROGRAM, e))
}

pub(super) fn attach_accept(ebpf: &mut Ebpf) -> Result<Result<(), String>, LoadError> {
    let program = accept_program(ebpf)?;
    for name in ACCEPT_TRACEPOINTS {
        if let Err(e) = program.attach("syscalls", name) {
            return Ok(Err(format!("attaching to syscalls:{name}: {e}")));
        }
    }
    Ok(Ok(()))
}

fn accept_program(ebpf: &mut Ebpf) -> Result<&mut TracePoint, LoadError> {
    Ok(ebpf
        .program_mut(ACCEPT_PROGRAM)
        .ok_or(LoadError::MissingProgram(ACCEPT_PROGRAM))?
        .try_into()?)
}

pub(super) fn attach(ebpf: &mut Ebpf, tp: &kernel::Tracepoint) -> Result<(), LoadError> {
    for program in tp.programs() {
        raw_tracepoint(ebpf, program)?
            .attach(tp.name)
            .map_err(|source| LoadError::Attach {
                group: tp.group,
                name: tp.name,
                source,
            })?;
    }
    Ok(())
}
