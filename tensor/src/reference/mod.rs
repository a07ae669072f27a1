//! Plain-loop twins of every fast kernel, accumulating in f64. Compiled for tests only.
//! One file per kernel family, mirroring the fast modules.
