// `{{name}}`: a Weir transform in JavaScript. `weir plugin build` turns it
// into a WebAssembly component (with componentize-js). A batch is plain
// objects: fields, numRows (BigInt) and columns of Arrow buffers.
import { counterAdd } from 'weir:plugin/host@0.1.1';

export const transform = {
  init(config) {
    // `config` is the stage's `config` table as JSON; throw an Error whose
    // `payload` is { kind: 'config', message } to refuse it.
  },
  process(input) {
    counterAdd('rows', input.numRows);
    // Change the batch here: filter rows, add or drop columns, split it.
    return [input];
  },
};
