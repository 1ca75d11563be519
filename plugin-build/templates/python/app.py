"""`{{name}}`: a Weir transform in Python. `weir plugin build` turns it into a
WebAssembly component (with componentize-py); `weir_batch` (shipped with
Weir) reads columns into lists and builds new ones."""

from wit_world import exports
from wit_world.imports import host


class Transform(exports.Transform):
    def init(self, config):
        # `config` is the stage's `config` table as JSON; raise
        # componentize_py_types.Err(types.PluginError(...)) to refuse it.
        pass

    def process(self, input):
        host.counter_add("rows", input.num_rows)
        # Change the batch here: filter rows, add or drop columns, split it.
        return [input]
