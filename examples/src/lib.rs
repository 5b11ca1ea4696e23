//! Runnable anykv examples live in `examples/examples/`.
