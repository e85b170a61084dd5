//! To be written: a backend-independent test suite.
