//! tcptrace's command line: parse flags, run the pipeline, report errors.
use clap::Parser as _;
use tcptrace::{cli::Args, session};

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    // A recording replays without root, BPF or a runtime.
    if !args.read.is_empty() {
        return exit_with(tcptrace::replay::run(&args).map(|()| None));
    }
    // Maps, programs, threads and the namespace listing each take a file
    // descriptor: make the soft limit what the hard limit allows.
    tcptrace::loader::raise_nofile();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("starting the runtime"))
        .and_then(|runtime| runtime.block_on(session::run(&args)));
    exit_with(result)
}

fn exit_with(result: anyhow::Result<Option<u8>>) -> std::process::ExitCode {
    match result {
        // With `-- COMMAND`: the command's exit status.
        Ok(Some(code)) => std::process::ExitCode::from(code),
        Ok(None) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcptrace: error: {}", tcptrace::errors::describe(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
