//! Time and randomness a plugin sees, made repeatable.
//!
//! A plugin reads the clock and random numbers only through WASI, and the
//! host answers those imports from a [`BatchEnv`] it sets before each batch:
//!
//! - the wall clock reads the batch's processing time (as Spark's
//!   `current_timestamp()`), advancing one microsecond per read so that
//!   successive readings still differ and order;
//! - the monotonic clock reads the same instant in nanoseconds, advancing
//!   one microsecond per read too;
//! - `wasi:random` (secure and insecure) is a ChaCha stream seeded from the
//!   query id, the stage and the batch id.
//!
//! A transform stage calls its plugin once per part of the batch (an input
//! batch), on whichever task is free: each call starts again at the batch's
//! time with a stream of the part's own ([`BatchEnv::for_part`]), and a
//! stateful function's call per key has the key's ([`BatchEnv::for_key`]),
//! so what a plugin reads never depends on how many tasks ran the batch.
//!
//! The batch time is logged in `offsets/N` and the query id in `metadata`,
//! so a replay of batch N after a crash gives the plugin exactly the values
//! the first attempt got, and its output is byte for byte the same.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use sha2::Digest;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// What one batch's plugin calls see of time and randomness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchEnv {
    /// The batch's processing time, µs since the epoch.
    pub time_us: i64,
    /// The seed of the batch's random stream.
    pub seed: [u8; 32],
}

impl BatchEnv {
    /// The values batch `batch_id` of query `query_id` hands stage `stage`
    /// (planned at `batch_time_ms`): the same on every attempt of the batch.
    pub fn for_batch(
        query_id: &uuid::Uuid,
        stage: &str,
        batch_id: u64,
        batch_time_ms: i64,
    ) -> Self {
        let mut hash = sha2::Sha256::new();
        hash.update(query_id.as_bytes());
        hash.update((stage.len() as u64).to_le_bytes());
        hash.update(stage.as_bytes());
        hash.update(batch_id.to_le_bytes());
        BatchEnv {
            time_us: batch_time_ms.saturating_mul(1000),
            seed: hash.finalize().into(),
        }
    }

    /// The values of one key's call in this batch (a stateful function):
    /// the batch's time, and a stream of the key's own, so a key draws the
    /// same numbers whatever other keys did before it.
    pub fn for_key(&self, key: &[u8]) -> Self {
        let mut hash = sha2::Sha256::new();
        hash.update(self.seed);
        hash.update(key);
        BatchEnv {
            time_us: self.time_us,
            seed: hash.finalize().into(),
        }
    }

    /// The values of one part of a stage's input (one of the batch's
    /// input batches): a stream of the part's own, so the part draws the
    /// same numbers whichever task runs it and whatever ran before it, and
    /// the clock starts again at the batch's time.
    pub fn for_part(&self, part: usize) -> Self {
        let mut hash = sha2::Sha256::new();
        hash.update(b"part");
        hash.update(self.seed);
        hash.update((part as u64).to_le_bytes());
        BatchEnv {
            time_us: self.time_us,
            seed: hash.finalize().into(),
        }
    }

    /// What an instance sees before its first batch (during `init`): the
    /// real time, and a stream seeded from the stage name.
    fn at_start(stage: &str) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        BatchEnv {
            time_us: now,
            seed: sha2::Sha256::digest(stage.as_bytes()).into(),
        }
    }
}

/// The state behind one instance's clocks and random streams; the host
/// keeps a handle to reset it at each batch.
#[derive(Clone)]
pub struct EnvHandle {
    inner: Arc<Mutex<EnvState>>,
}

struct EnvState {
    time_us: i64,
    /// Clock reads since the batch began (each advances the clocks 1 µs).
    reads: i64,
    random: StdRng,
}

impl EnvHandle {
    /// A handle for an instance of `stage`, before any batch.
    pub fn new(stage: &str) -> EnvHandle {
        let start = BatchEnv::at_start(stage);
        EnvHandle {
            inner: Arc::new(Mutex::new(EnvState {
                time_us: start.time_us,
                reads: 0,
                random: StdRng::from_seed(start.seed),
            })),
        }
    }

    /// Starts a batch: the clocks go to its time, the random stream to its
    /// seed.
    pub fn begin(&self, env: BatchEnv) {
        let mut state = self.lock();
        state.time_us = env.time_us;
        state.reads = 0;
        state.random = StdRng::from_seed(env.seed);
    }

    /// Wires this handle into a WASI context being built.
    pub fn install(&self, builder: &mut wasmtime_wasi::WasiCtxBuilder, stage: &str) {
        builder
            .wall_clock(WallClock(self.clone()))
            .monotonic_clock(MonotonicClock(self.clone()))
            .secure_random(Random(self.clone()))
            .insecure_random(Random(self.clone()))
            // The seed of the guest's hash maps: fixed, so that iteration
            // orders do not vary from run to run.
            .insecure_random_seed(u128::from_le_bytes(
                sha2::Sha256::digest(stage.as_bytes())[..16]
                    .try_into()
                    .expect("16 bytes"),
            ));
    }

    /// The next clock reading, µs since the epoch.
    fn read_us(&self) -> i64 {
        let mut state = self.lock();
        let now = state.time_us.saturating_add(state.reads);
        state.reads = state.reads.saturating_add(1);
        now
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, EnvState> {
        // The state is plain values: a panic elsewhere cannot leave it torn.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct WallClock(EnvHandle);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_micros(1)
    }

    fn now(&self) -> Duration {
        Duration::from_micros(u64::try_from(self.0.read_us()).unwrap_or(0))
    }
}

struct MonotonicClock(EnvHandle);

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1_000
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.read_us())
            .unwrap_or(0)
            .saturating_mul(1_000)
    }
}

struct Random(EnvHandle);

impl rand::TryRng for Random {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(rand::Rng::next_u32(&mut self.0.lock().random))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(rand::Rng::next_u64(&mut self.0.lock().random))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        rand::Rng::fill_bytes(&mut self.0.lock().random, dst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_sees_the_same_values_on_every_attempt() {
        let id = uuid::Uuid::from_u128(7);
        let env = BatchEnv::for_batch(&id, "enrich", 3, 1_700_000_000_000);
        let draw = || {
            let handle = EnvHandle::new("enrich");
            handle.begin(env);
            let mut random = Random(handle.clone());
            let clock = WallClock(handle.clone());
            (clock.now(), clock.now(), rand::Rng::next_u64(&mut random))
        };
        let (first, second, number) = draw();
        assert_eq!(first, Duration::from_micros(1_700_000_000_000_000));
        assert_eq!(second, first + Duration::from_micros(1));
        assert_eq!(draw(), (first, second, number));
        let other = BatchEnv::for_batch(&id, "enrich", 4, 1_700_000_000_000);
        assert_ne!(other.seed, env.seed, "another batch draws other numbers");
        let other_stage = BatchEnv::for_batch(&id, "score", 3, 1_700_000_000_000);
        assert_ne!(
            other_stage.seed, env.seed,
            "another stage draws other numbers"
        );
    }
}
