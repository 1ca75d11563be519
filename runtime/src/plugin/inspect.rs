//! `weir plugin inspect`: what a component is, seen from the host — which
//! Weir world it implements, what it imports and exports, and whether this
//! host can link it.

use std::path::Path;

use wasmtime::component::{Component, Linker};

use super::bindings::PluginState;
use super::{PluginEngine, load_error, read_wasm};
use crate::error::Result;

/// A component's interface as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The Weir world whose exports it has (`transform-plugin`, ...), if any.
    pub world: Option<&'static str>,
    /// Exported interface names.
    pub exports: Vec<String>,
    /// Imported interface names.
    pub imports: Vec<String>,
    /// Component size in bytes.
    pub size: u64,
    /// Why this host cannot link it, if it cannot.
    pub link_error: Option<String>,
}

/// Weir's plugin worlds by the interface each exports.
const WORLDS: &[(&str, &str)] = &[
    ("weir:plugin/transform", "transform-plugin"),
    ("weir:plugin/stateful", "stateful-plugin"),
    ("weir:plugin/batch-sink", "batch-sink-plugin"),
];

impl PluginEngine {
    /// Describes the component at `path` without running it.
    pub fn inspect(&self, path: &Path) -> Result<PluginInfo> {
        let wasm = read_wasm("inspect", path)?;
        let component = Component::new(&self.engine, &wasm)
            .map_err(|e| load_error("inspect", path, format!("{e:#}")))?;
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let world = world_exported(&exports);
        let linker: Option<&Linker<PluginState>> = match world {
            Some("transform-plugin") => Some(&self.linker),
            Some("stateful-plugin") => Some(&self.stateful_linker),
            Some("batch-sink-plugin") => Some(&self.batch_sink_linker),
            _ => None,
        };
        let link_error = match linker {
            Some(linker) => linker
                .instantiate_pre(&component)
                .err()
                .map(|e| format!("{e:#}")),
            None => Some(format!(
                "it exports none of {:?}",
                WORLDS.iter().map(|(i, _)| *i).collect::<Vec<_>>()
            )),
        };
        Ok(PluginInfo {
            world,
            exports,
            imports,
            size: wasm.len() as u64,
            link_error,
        })
    }
}

/// The Weir world whose interface `exports` (export names) include.
fn world_exported(exports: &[String]) -> Option<&'static str> {
    WORLDS
        .iter()
        .find(|(interface, _)| {
            exports
                .iter()
                .any(|e| e.split('@').next() == Some(*interface))
        })
        .map(|(_, world)| *world)
}

/// Why `component` cannot be linked as a `wanted` plugin, when the reason is
/// that it implements another Weir world (or none): a clearer message than
/// the linker's about the first import or export that does not fit.
pub(super) fn world_mismatch(
    engine: &wasmtime::Engine,
    component: &Component,
    wanted: &str,
) -> Option<String> {
    let exports: Vec<String> = component
        .component_type()
        .exports(engine)
        .map(|(n, _)| n.to_string())
        .collect();
    match world_exported(&exports) {
        Some(world) if world == wanted => None,
        Some(world) => Some(format!(
            "it is a `{world}` component, not a `{wanted}` one (it exports {})",
            exports.join(", ")
        )),
        None => Some(format!(
            "it implements no Weir world: a `{wanted}` exports `{}`, this component exports {}",
            WORLDS
                .iter()
                .find(|(_, w)| *w == wanted)
                .map_or("?", |(i, _)| *i),
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )),
    }
}
