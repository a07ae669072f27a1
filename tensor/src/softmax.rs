//! (Implementation: issue 2.)
