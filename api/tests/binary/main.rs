//! The real `milepost` binary run as a process: its command line, and its crash safety
//! (SIGKILL mid-work, restart, durable acknowledgements traced with strace).

mod cli;
mod cluster;
mod crash;
mod mount;
mod process;
