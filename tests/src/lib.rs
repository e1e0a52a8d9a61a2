//! The end-to-end suite's own library: what the benchmarks in `src/bin/` share that is not a
//! test fixture (fixtures, `TestApp` and the loopback world are in `milepost-testkit`).

pub mod cpu;
pub mod search_mix;
