//! Test support for the bounce intakes.
