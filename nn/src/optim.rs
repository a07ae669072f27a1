//! (Implementation: issue 3.)
