//! A query's physical plan as `weir explain` prints it: the steps rows take,
//! how many tasks run each, how rows reach it (forward, or shuffled by key
//! into key groups) and where its state lives.

use std::fmt;

use crate::config::{Pipeline, SinkKind, SourceConfig, StreamJoinKind, TopicSelection};
use crate::operator::WindowKind;
use crate::state::KeyGroups;

use super::tasks::task_count;

/// How rows reach a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    /// The first step: rows come from outside.
    Source,
    /// As they are, in order.
    Forward,
    /// Split by the key group of these columns' values.
    Shuffle(Vec<String>),
    /// Every task's rows together, in key group order.
    Merge,
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the step is (`read`, `join`, `transform`, `aggregate`, ...).
    pub kind: &'static str,
    /// What it does, in the pipeline's words.
    pub detail: String,
    /// Tasks that run it.
    pub tasks: usize,
    /// How rows reach it.
    pub edge: Edge,
    /// Where its state lives in the checkpoint, if it keeps any.
    pub state: Option<String>,
}

/// A query's steps, in the order rows take them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The query's name.
    pub name: String,
    /// Its key groups.
    pub key_groups: KeyGroups,
    /// The steps.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The plan of `pipeline` when its state has `key_groups`.
    pub fn of(pipeline: &Pipeline, key_groups: KeyGroups) -> Plan {
        let tasks = task_count(pipeline, key_groups);
        let mut steps = Vec::new();
        for input in &pipeline.inputs {
            let detail = match &input.source {
                SourceConfig::File(file) => {
                    format!("{} file {} ({:?})", input.name, file.path, file.format).to_lowercase()
                }
                SourceConfig::Kafka(kafka) => match &kafka.topics {
                    TopicSelection::Topics(topics) => {
                        format!("{} kafka topics {}", input.name, topics.join(", "))
                    }
                    TopicSelection::Pattern(p) => format!("{} kafka topics ~ {p}", input.name),
                },
            };
            steps.push(Step {
                kind: "read",
                detail,
                tasks: 1,
                edge: Edge::Source,
                state: None,
            });
        }
        let mut edge_after = Edge::Forward;
        if let Some(join) = &pipeline.stream_join {
            let side = |i: usize| &pipeline.inputs[i].name;
            let on: Vec<String> = join
                .left_on
                .iter()
                .zip(&join.right_on)
                .map(|(l, r)| format!("{}.{l} = {}.{r}", side(join.left), side(join.right)))
                .collect();
            steps.push(Step {
                kind: "join",
                detail: format!("{} join on {}", join_kind(join.kind), on.join(" and ")),
                tasks,
                edge: Edge::Shuffle(join.left_on.clone()),
                state: Some("state/join/<version>.<key groups>".into()),
            });
            edge_after = Edge::Merge;
        }
        for transform in &pipeline.transforms {
            steps.push(Step {
                kind: "transform",
                detail: format!("{} ({})", transform.name, file_name(&transform.plugin)),
                tasks: pipeline.parallelism.tasks,
                edge: std::mem::replace(&mut edge_after, Edge::Forward),
                state: None,
            });
        }
        if let Some(join) = &pipeline.static_join {
            steps.push(Step {
                kind: "join",
                detail: format!("with a table on {}", join.on.join(", ")),
                tasks: 1,
                edge: std::mem::replace(&mut edge_after, Edge::Forward),
                state: None,
            });
        }
        let mut operator = 0;
        let mut stateful = |kind: &'static str, detail: String, key: &[String]| {
            let step = Step {
                kind,
                detail,
                tasks,
                edge: Edge::Shuffle(key.to_vec()),
                state: Some(format!("state/{operator}/<version>.<key groups>")),
            };
            operator += 1;
            step
        };
        if let Some(dedup) = &pipeline.deduplicate {
            let detail = format!("drop duplicates of {}", dedup.columns.join(", "));
            steps.push(stateful("deduplicate", detail, &dedup.columns));
        }
        for aggregate in [&pipeline.aggregate, &pipeline.then_aggregate]
            .into_iter()
            .flatten()
        {
            let window = match aggregate.window {
                WindowKind::Tumbling { size_ms } => format!("{} tumbling", duration(size_ms)),
                WindowKind::Sliding { size_ms, slide_ms } => {
                    format!("{} sliding every {}", duration(size_ms), duration(slide_ms))
                }
                WindowKind::Session { gap_ms } => format!("{} session", duration(gap_ms)),
            };
            let by = match aggregate.group_by.is_empty() {
                true => String::new(),
                false => format!(" by {}", aggregate.group_by.join(", ")),
            };
            let detail = format!("{window} windows of {}{by}", aggregate.time_column);
            steps.push(stateful("aggregate", detail, &aggregate.group_by));
        }
        if let Some(function) = &pipeline.stateful {
            let detail = format!(
                "{} ({}) by {}",
                function.stage.name,
                file_name(&function.stage.plugin),
                function.key.join(", ")
            );
            steps.push(stateful("stateful", detail, &function.key));
        }
        let stateful_steps = operator > 0;
        let sink = &pipeline.sink;
        let mut detail = format!("{:?}", sink.kind()).to_lowercase();
        if let Some(path) = sink.path() {
            detail.push_str(&format!(" {path}"));
        }
        if sink.kind() != SinkKind::ForeachBatch {
            detail.push_str(&format!(" ({:?})", sink.output_mode).to_lowercase());
        }
        steps.push(Step {
            kind: "write",
            detail,
            tasks: 1,
            edge: match stateful_steps {
                true => Edge::Merge,
                false => edge_after,
            },
            state: None,
        });
        Plan {
            name: pipeline.name.clone(),
            key_groups,
            steps,
        }
    }
}

impl Plan {
    /// The plan of `pipeline` with the key groups its checkpoint recorded
    /// (or, before its first start, those the first start will record).
    pub async fn of_checkpointed(pipeline: &Pipeline) -> crate::error::Result<Plan> {
        let key_groups =
            match crate::checkpoint::Checkpoint::open_read_only(&pipeline.checkpoint).await {
                Ok(checkpoint) => checkpoint.recorded_key_groups().await?,
                Err(_) => KeyGroups::try_new(
                    pipeline
                        .parallelism
                        .key_groups
                        .unwrap_or(crate::state::DEFAULT_KEY_GROUPS),
                )?,
            };
        Ok(Plan::of(pipeline, key_groups))
    }
}

impl Edge {
    /// How the edge reads in a plan: `from outside`, `forward`, `merge`,
    /// `shuffle by user`.
    pub fn describe(&self) -> String {
        match self {
            Edge::Source => "from outside".into(),
            Edge::Forward => "forward".into(),
            Edge::Merge => "merge".into(),
            Edge::Shuffle(key) if key.is_empty() => "shuffle: one key group".into(),
            Edge::Shuffle(key) => format!("shuffle by {}", key.join(", ")),
        }
    }
}

impl Plan {
    /// The plan as JSON (the console draws it): `name`, `keyGroups` and
    /// `steps` of `kind`, `detail`, `tasks`, `edge` and `state`.
    pub fn to_json(&self) -> serde_json::Value {
        let steps: Vec<serde_json::Value> = self
            .steps
            .iter()
            .map(|step| {
                serde_json::json!({
                    "kind": step.kind,
                    "detail": step.detail,
                    "tasks": step.tasks,
                    "edge": step.edge.describe(),
                    "state": step.state,
                })
            })
            .collect();
        serde_json::json!({
            "name": self.name,
            "keyGroups": self.key_groups.count(),
            "steps": steps,
        })
    }
}

fn join_kind(kind: StreamJoinKind) -> &'static str {
    match kind {
        StreamJoinKind::Inner => "inner",
        StreamJoinKind::LeftOuter => "left outer",
        StreamJoinKind::RightOuter => "right outer",
        StreamJoinKind::LeftSemi => "left semi",
    }
}

/// A plugin's file name: its directory says nothing about the plan.
fn file_name(path: &std::path::Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn duration(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64)).to_string()
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let groups = match self.key_groups.count() {
            1 => "1 key group".to_string(),
            n => format!("{n} key groups"),
        };
        writeln!(f, "query `{}`: keyed state in {groups}", self.name)?;
        writeln!(
            f,
            "  {:<11} {:<58} {:<8} {:<24} state",
            "step", "what", "tasks", "rows arrive"
        )?;
        for step in &self.steps {
            let edge = step.edge.describe();
            let tasks = match step.tasks {
                1 => "1 task".to_string(),
                n => format!("{n} tasks"),
            };
            let state = step.state.as_deref().unwrap_or("");
            let line = format!(
                "  {:<11} {:<58} {:<8} {:<24} {state}",
                step.kind, step.detail, tasks, edge
            );
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}
