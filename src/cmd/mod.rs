//! The commands, one file each; every one is entered through its `run`. `cli.rs` parses
//! the command line and calls them.

pub mod load_test;
pub mod serve;
pub mod status;
pub mod unstick;
pub mod wallet;
