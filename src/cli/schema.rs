//! `bindgate schema`: prints the config file's JSON Schema.

pub fn run() {
    print!("{}", crate::config::json_schema());
}
