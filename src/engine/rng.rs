//! placeholder: owned by a helper, not yet written.
