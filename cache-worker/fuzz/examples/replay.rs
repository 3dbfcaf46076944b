//! Turns fuzzer inputs into dump files and tells what each decodes to: for `mutate_dump`
//! artifacts, the dump bytes the input describes (after its edits) are written to `<out dir>`,
//! ready for `tests/corpus/`; for `decode_dump` artifacts, the input is the dump itself.
//!
//! ```sh
//! cargo run --manifest-path cache-worker/fuzz/Cargo.toml --example replay -- \
//!     mutate_dump <out dir> fuzz/artifacts/mutate_dump/oom-...
//! ```

use arbitrary::{Arbitrary, Unstructured};
use cache_worker_fuzz::{Input, build, model};

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay <decode_dump|mutate_dump> <out dir> <input>...");
    let out = std::path::PathBuf::from(args.next().expect("an output directory"));
    std::fs::create_dir_all(&out).expect("create the output directory");
    for path in args {
        let data = std::fs::read(&path).expect("read an input");
        let bytes = match target.as_str() {
            "decode_dump" => data,
            "mutate_dump" => {
                let input = Input::arbitrary_take_rest(Unstructured::new(&data)).expect("an Input");
                match build(&input) {
                    Some((_, bytes)) => bytes,
                    None => {
                        println!("{path}: no dump (bucket name too long)");
                        continue;
                    }
                }
            }
            other => panic!("unknown target {other}"),
        };
        let name = std::path::Path::new(&path)
            .file_name()
            .expect("a file name")
            .to_string_lossy()
            .into_owned();
        std::fs::write(out.join(format!("{target}-{name}.bin")), &bytes).expect("write");
        println!(
            "{path}: {} bytes, header says {:?}, decodes to {}",
            bytes.len(),
            model::expected(&bytes),
            model::describe(&model::decode(&bytes))
        );
    }
}
