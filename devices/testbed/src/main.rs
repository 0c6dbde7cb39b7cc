//! `testbed`: provisions QEMU and the guest image, serves emulated devices over vfio-user,
//! boots guests that run our drivers, and reports what both sides saw. The commands live
//! in `testbed::cli`.

fn main() -> std::process::ExitCode {
    testbed::cli::main()
}
