//! The bad-input suite (issue 17): what a corpus of bad inputs and a newcomer's walkthrough of
//! the README found, each through the real binary. Files damaged or lost (outputs equal to
//! inputs, modes, formats, special files, signals), crashes and hangs (sizes, deep YAML), wrong
//! exit codes and silent acceptance (truncated JPEGs, unknown config names, eval and data
//! pipelines, masks), and messages, help and manuals.

mod common;
mod config;
mod data;
mod decoding;
mod eval;
mod files;
mod limits;
mod messages;
mod signals;
mod training;
