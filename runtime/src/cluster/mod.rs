//! A query across replicas: N identical `weir run --replica ID` processes,
//! on any hosts, share a query's work with nothing but Kafka and object
//! storage, the way Kafka Streams does — no coordinator of Weir's own.
//!
//! - **Shards.** The query's work is cut into shards that never change: a
//!   source shard per partition of its source topics and, with a stateful
//!   operator, a state shard per partition of the repartition topic (see
//!   `repartition.rs`), owning a range of key groups. A shard is run as an
//!   ordinary query with a checkpoint of its own under
//!   `<checkpoint>/shards/<topic>-<partition>/` (offsets, commits, plugin
//!   versions, state), so every guarantee of a single query — replay of a
//!   batch's exact offset ranges, idempotent sinks, exactly-once — holds
//!   per shard, wherever it runs.
//! - **Assignment.** Every replica joins the pipeline's Kafka consumer
//!   group (cooperative-sticky assignment, static membership by replica
//!   id, so a restart within the session timeout does not reshuffle); the
//!   partitions the group assigns are the shards the replica runs. The
//!   group member reads nothing: its partitions stay paused, and each shard
//!   reads its offset ranges with a consumer of its own.
//! - **Hand-over.** A revoked shard finishes its batch and commits before
//!   the replica lets the group go on, so its next owner starts at the
//!   next batch. A replica that dies mid-batch leaves a planned, uncommitted
//!   batch; the next owner replays it from the same offsets.
//! - **Fencing.** A shard's checkpoint holds a lease lasting the session
//!   timeout; a replica that stalled past it (and lost the shard) finds its
//!   lease expired or taken and writes nothing more, and the checkpoint's
//!   entries are created once (`If-None-Match`), so two owners can never
//!   both commit a batch.
//!
//! - **Status.** Each replica reports the shards it runs to
//!   `<checkpoint>/replicas/<id>.json` (see `status.rs`); `weir status
//!   PIPELINE.toml` reads the reports.
//!
//! File sinks write each shard's output under `shard=<topic>-<partition>/`
//! of the sink's directory (each with its own exactly-once log); Delta
//! tables and Kafka topics receive every shard's batches as they are.

mod membership;
mod repartition;
mod replica;
mod shard;
mod status;

pub use replica::{Replica, ReplicaOutcome, default_replica_id};
pub use shard::Shard;
pub use status::{ClusterStatus, ReplicaReport, ReplicaStatus, ShardReport, cluster_status};
