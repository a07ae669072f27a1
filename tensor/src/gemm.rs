//! The one GEMM entry point every kernel calls. (Implementation: issue 2.)
