//! Throughput of the 8-lane MD5 kernels against OpenSSL's MD5 on this CPU:
//! `cargo run --release -p milepost-cacher --example md5x8_speed`.

use milepost_cacher::digest::x8::{self, Kernel};

fn main() {
    let data = vec![7u8; 64 * 1024];
    let blocks: Vec<&[u8; 64]> = data
        .chunks_exact(64)
        .map(|b| b.try_into().expect("64 bytes"))
        .collect();
    let rounds = 20;
    for kernel in Kernel::on_this_cpu() {
        let mut states = [x8::INITIAL; 8];
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for b in &blocks {
                x8::compress8_with(kernel, &mut states, [Some(b); 8]);
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let bytes = (rounds * data.len() * 8) as f64;
        println!(
            "{kernel:?}, 8 lanes: {:.0} MB/s aggregate ({:?})",
            bytes / secs / 1e6,
            states[0][0]
        );
        let t = std::time::Instant::now();
        for _ in 0..rounds {
            for b in &blocks {
                x8::compress8_with(
                    kernel,
                    &mut states,
                    [Some(b), None, None, None, None, None, None, None],
                );
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{kernel:?}, 1 lane: {:.0} MB/s",
            (rounds * data.len()) as f64 / secs / 1e6
        );
    }
    let mut m = milepost_cacher::digest::Md5::new();
    let t = std::time::Instant::now();
    for _ in 0..rounds * 8 {
        m.update(&data).expect("md5");
    }
    println!(
        "openssl: {:.0} MB/s",
        (rounds * 8 * data.len()) as f64 / t.elapsed().as_secs_f64() / 1e6
    );
}
