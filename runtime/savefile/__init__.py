"""Model files on disk (docs/runtime.md): a zip of .npy members + JSON with a sha256 manifest; no pickle.

`from boltc.runtime import savefile; savefile.load_model(path)` is the public surface, so it is
re-exported here."""
from boltc.runtime.savefile.model import (FORMAT, FORMAT_VERSION, MANIFEST, SavedModel, flatten_state,  # noqa: F401
                                          load_model, member_states, member_to_saved, npy_bytes, read_archive,
                                          save_model, state_from_saved,
                                          state_to_saved, unflatten_state, write_archive)
