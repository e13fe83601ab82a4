//! QEMU: one machine builder and one way to run it.
//!
//! [`Machine`] is a command line: the machine of `qemu/virt.args` with its RAM and `-machine`
//! properties edited, and the CPUs, instruction counting, monitor socket and other arguments a
//! caller adds. [`Run`] starts a command with its output read line by line (each line stamped
//! with the time since the start), an optional deadline (with a report taken before the kill),
//! console input typed when a given line appears, and the exit status;
//! [`Machine::run_attached`] gives QEMU the terminal instead. [`Monitor`] talks to QEMU's human
//! monitor while it runs.

use crate::root;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const QEMU: &str = "qemu-system-aarch64";

/// A QEMU command line, built argument by argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    args: Vec<String>,
}

impl Machine {
    /// The machine of `qemu/virt.args` (one argument per line, `#` comments).
    pub fn virt() -> Result<Self, String> {
        let path = root().join("qemu/virt.args");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self::from_args_file(&text))
    }

    /// The arguments of a file in the format of `qemu/virt.args`.
    pub fn from_args_file(text: &str) -> Self {
        Self { args: text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(String::from).collect() }
    }

    /// The RAM size (`-m`), replacing the one given: one `-m` on the command line is clearer
    /// to read than two (QEMU would take the last).
    pub fn mem(mut self, size: &str) -> Self {
        match self.args.iter().position(|a| a == "-m") {
            Some(i) if i + 1 < self.args.len() => self.args[i + 1] = size.to_string(),
            _ => self.args.extend(["-m".to_string(), size.to_string()]),
        }
        self
    }

    /// Sets properties of `-machine`, e.g. `("virtualization", "off")`, replacing those given.
    pub fn machine_properties(mut self, props: &[(&str, &str)]) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == "-machine").filter(|i| i + 1 < self.args.len()) {
            let mut list: Vec<String> = self.args[i + 1].split(',').map(String::from).collect();
            for (key, value) in props {
                let prop = format!("{key}={value}");
                match list.iter_mut().find(|p| p.split_once('=').is_some_and(|(k, _)| k == *key)) {
                    Some(p) => *p = prop,
                    None => list.push(prop),
                }
            }
            self.args[i + 1] = list.join(",");
        }
        self
    }

    /// `n` CPUs.
    pub fn smp(self, n: u32) -> Self {
        self.args(["-smp", &n.to_string()])
    }

    /// Instruction counting, e.g. `shift=0` (one instruction per ns of virtual time).
    pub fn icount(self, spec: &str) -> Self {
        self.args(["-icount", spec])
    }

    /// No display and no default monitor; the first serial port is QEMU's stdin and stdout.
    pub fn serial_on_stdio(self) -> Self {
        self.args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
    }

    /// QEMU's human monitor on the Unix socket `path` (QEMU creates it; it does not wait for a
    /// client).
    pub fn monitor_socket(self, path: &Path) -> Self {
        let chardev = format!("socket,id=xtaskmon,path={},server=on,wait=off", path.display());
        self.args(["-chardev", &chardev, "-mon", "chardev=xtaskmon,mode=readline"])
    }

    /// `file` loaded at its ELF addresses (`-kernel`).
    pub fn kernel(self, file: &Path) -> Self {
        self.args(["-kernel", &file.display().to_string()])
    }

    /// `file` loaded by QEMU's generic loader: at its ELF addresses, or raw at `addr`.
    pub fn loader(self, file: &Path, raw_at: Option<u64>) -> Self {
        let device = match raw_at {
            Some(addr) => format!("loader,file={},addr={addr:#x},force-raw=on", file.display()),
            None => format!("loader,file={}", file.display()),
        };
        self.args(["-device", &device])
    }

    /// More arguments.
    pub fn args<'a>(mut self, args: impl IntoIterator<Item = &'a str>) -> Self {
        self.args.extend(args.into_iter().map(String::from));
        self
    }

    /// The arguments so far.
    #[cfg(test)]
    pub fn arguments(&self) -> &[String] {
        &self.args
    }

    /// The command that starts this machine.
    pub fn command(&self) -> Command {
        let mut c = Command::new(QEMU);
        c.args(&self.args);
        c
    }

    /// Runs the machine on the terminal (its console is the terminal's output, and its input
    /// if `terminal_input`) and returns QEMU's exit status.
    pub fn run_attached(&self, terminal_input: bool) -> Result<ExitStatus, String> {
        let mut c = self.command();
        if !terminal_input {
            c.stdin(Stdio::null());
        }
        c.status().map_err(|e| format!("cannot start QEMU: {e}"))
    }
}

/// A client of QEMU's human monitor on a Unix socket ([`Machine::monitor_socket`]).
pub struct Monitor(UnixStream);

impl Monitor {
    /// Connects and reads the greeting up to the first prompt; a reply that takes longer than
    /// 5 s is cut short.
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let stream = UnixStream::connect(socket).map_err(|e| format!("QEMU monitor {}: {e}", socket.display()))?;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut monitor = Self(stream);
        monitor.read_to_prompt();
        Ok(monitor)
    }

    /// Sends one command and returns what QEMU printed before the next prompt.
    pub fn command(&mut self, cmd: &str) -> String {
        let _ = self.0.write_all(format!("{cmd}\n").as_bytes());
        self.read_to_prompt()
    }

    fn read_to_prompt(&mut self) -> String {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 65536];
        while !buf.ends_with(b"(qemu) ") {
            match self.0.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        String::from_utf8_lossy(&buf).replace("\r\n", "\n")
    }
}

/// One line of output, without its line ending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// When it was read, from the start.
    pub at: Duration,
    pub text: String,
}

/// How a run ended.
#[derive(Debug)]
pub struct Outcome {
    /// Every line of stdout and stderr, in the order read.
    pub lines: Vec<Line>,
    /// QEMU's exit status; `None` if it was killed at the deadline.
    pub status: Option<ExitStatus>,
    /// What the deadline hook reported before the kill.
    pub deadline_report: Option<String>,
    /// From the start to the exit (or the kill).
    pub wall: Duration,
}

impl Outcome {
    /// The exit code (`None`: killed at the deadline, or by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// The lines' text.
    pub fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.text.clone()).collect()
    }
}

/// A QEMU process with its output read line by line.
pub struct Run<'a> {
    command: Command,
    deadline: Option<Duration>,
    script: Vec<(String, String)>,
    echo: bool,
    stderr_to_terminal: bool,
    stderr_label: &'a str,
    on_deadline: Option<Box<dyn FnOnce() -> String + 'a>>,
}

impl<'a> Run<'a> {
    /// `machine` with its output read.
    pub fn new(machine: &Machine) -> Self {
        Self::of_command(machine.command())
    }

    /// Any command (the tests use `sh`).
    pub fn of_command(command: Command) -> Self {
        Self { command, deadline: None, script: Vec::new(), echo: false, stderr_to_terminal: false, stderr_label: "", on_deadline: None }
    }

    /// Kills the process once `after` has passed since the start.
    pub fn deadline(mut self, after: Duration) -> Self {
        self.deadline = Some(after);
        self
    }

    /// Console input: once a line containing the first text has appeared, the second is typed
    /// (with a newline), in order. Without a script stdin is closed.
    pub fn script(mut self, script: &[(String, String)]) -> Self {
        self.script = script.to_vec();
        self
    }

    /// Prints every line as it is read, as `    | LINE`.
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Leaves stderr on the terminal instead of reading it.
    pub fn stderr_to_terminal(mut self) -> Self {
        self.stderr_to_terminal = true;
        self
    }

    /// Puts `label` in front of every stderr line.
    pub fn label_stderr(mut self, label: &'a str) -> Self {
        self.stderr_label = label;
        self
    }

    /// Called when the deadline passes, before the kill (QEMU still runs): its text goes to
    /// [`Outcome::deadline_report`].
    pub fn on_deadline(mut self, report: impl FnOnce() -> String + 'a) -> Self {
        self.on_deadline = Some(Box::new(report));
        self
    }

    /// Starts the process and reads it to its end or to the deadline.
    pub fn wait(mut self) -> Result<Outcome, String> {
        let start = Instant::now();
        let mut child = self
            .command
            .stdin(if self.script.is_empty() { Stdio::null() } else { Stdio::piped() })
            .stdout(Stdio::piped())
            .stderr(if self.stderr_to_terminal { Stdio::inherit() } else { Stdio::piped() })
            .spawn()
            .map_err(|e| format!("cannot start QEMU: {e}"))?;
        let rx = read_lines(&mut child, start, self.stderr_label);
        let mut stdin = child.stdin.take();
        let mut script = self.script.iter().peekable();
        let mut lines = Vec::new();
        let mut take = |line: Line, lines: &mut Vec<Line>| {
            if self.echo {
                println!("    | {}", line.text);
            }
            if let (Some((_, text)), Some(w)) = (script.next_if(|(after, _)| line.text.contains(after.as_str())), stdin.as_mut()) {
                let _ = w.write_all(format!("{text}\n").as_bytes());
                let _ = w.flush();
            }
            lines.push(line);
        };
        let mut deadline_report = None;
        let status = loop {
            while let Ok(l) = rx.try_recv() {
                take(l, &mut lines);
            }
            match child.try_wait().map_err(|e| format!("waiting for QEMU: {e}"))? {
                Some(status) => break Some(status),
                None if self.deadline.is_some_and(|d| start.elapsed() >= d) => {
                    deadline_report = self.on_deadline.take().map(|report| report());
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let wall = start.elapsed();
        // The readers end when QEMU's pipes close.
        for l in rx.iter() {
            take(l, &mut lines);
        }
        Ok(Outcome { lines, status, deadline_report, wall })
    }
}

/// Starts a reader thread for each of the child's output pipes; the lines arrive stamped, with
/// `\r` dropped and `stderr_label` in front of stderr's.
fn read_lines(child: &mut Child, start: Instant, stderr_label: &str) -> mpsc::Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().map(|s| (Box::new(s) as Box<dyn Read + Send>, String::new()));
    let err = child.stderr.take().map(|s| (Box::new(s) as Box<dyn Read + Send>, stderr_label.to_string()));
    for (stream, label) in [out, err].into_iter().flatten() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for text in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(Line { at: start.elapsed(), text: format!("{label}{}", text.trim_end_matches('\r')) });
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Run<'static> {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        Run::of_command(c)
    }

    #[test]
    fn machine_arguments_are_edited_not_duplicated() {
        let base = Machine::from_args_file("# the machine\n-machine\nvirt,virtualization=on,secure=off,mte=on\n\n-m\n1G\n-nic\nnone\n");
        assert_eq!(base.arguments(), ["-machine", "virt,virtualization=on,secure=off,mte=on", "-m", "1G", "-nic", "none"]);
        let e = base.clone().mem("2G").machine_properties(&[("virtualization", "off"), ("mte", "off"), ("its", "off")]);
        assert_eq!(e.arguments(), ["-machine", "virt,virtualization=off,secure=off,mte=off,its=off", "-m", "2G", "-nic", "none"]);
        let no_m = Machine::from_args_file("-machine\nvirt\n").mem("512M");
        assert_eq!(no_m.arguments()[2..], ["-m", "512M"]);
        // The project's machine file has what the edits expect.
        let real = Machine::virt().unwrap().mem("2G").machine_properties(&[("virtualization", "off")]);
        assert!(real.arguments().iter().any(|a| a.starts_with("virt,") && a.contains("virtualization=off") && !a.contains("virtualization=on")), "{real:?}");
        assert_eq!(real.arguments().iter().filter(|a| *a == "-m").count(), 1);
    }

    #[test]
    fn machine_options_become_qemu_arguments() {
        let m = Machine::from_args_file("-machine\nvirt\n")
            .smp(2)
            .serial_on_stdio()
            .kernel(Path::new("/b/boot"))
            .loader(Path::new("/b/host"), None)
            .loader(Path::new("/b/guest"), Some(0x4800_0000))
            .icount("shift=0")
            .monitor_socket(Path::new("/tmp/m.mon"))
            .args(["-append", "scenario=demo"]);
        let expected = "-machine virt -smp 2 -display none -monitor none -serial stdio -kernel /b/boot -device loader,file=/b/host \
            -device loader,file=/b/guest,addr=0x48000000,force-raw=on -icount shift=0 \
            -chardev socket,id=xtaskmon,path=/tmp/m.mon,server=on,wait=off -mon chardev=xtaskmon,mode=readline -append scenario=demo";
        assert_eq!(m.arguments().join(" "), expected);
        assert_eq!(m.command().get_program(), QEMU);
    }

    #[test]
    fn the_machine_has_no_network_card() {
        let m = Machine::virt().unwrap();
        assert!(m.arguments().windows(2).any(|w| w[0] == "-nic" && w[1] == "none"), "qemu/virt.args must say -nic none");
    }

    #[test]
    fn lines_and_exit_status_are_read() {
        let out = sh("printf 'one\\r\\ntwo\\n'; echo oops >&2; exit 3").label_stderr("qemu: ").wait().unwrap();
        assert_eq!(out.code(), Some(3));
        let mut texts = out.texts();
        texts.sort();
        assert_eq!(texts, ["one", "qemu: oops", "two"], "\\r dropped, stderr labelled");
        assert!(out.deadline_report.is_none());
        assert!(out.lines.iter().all(|l| l.at <= out.wall + Duration::from_secs(1)));
    }

    #[test]
    fn the_deadline_kills_after_the_report() {
        let out = sh("echo started; exec sleep 30").deadline(Duration::from_millis(300)).on_deadline(|| "what it was doing".into()).wait().unwrap();
        assert_eq!(out.status.map(|s| s.code()), None, "killed, no status");
        assert_eq!(out.deadline_report.as_deref(), Some("what it was doing"));
        assert_eq!(out.texts(), ["started"]);
        assert!(out.wall >= Duration::from_millis(300) && out.wall < Duration::from_secs(10), "{:?}", out.wall);
    }

    #[test]
    fn the_script_types_after_its_line() {
        let script = [("login:".to_string(), "root".to_string()), ("#".to_string(), "exit".to_string())];
        let out = sh("echo login:; read user; echo \"# as $user\"; read cmd; echo \"ran $cmd\"").script(&script).deadline(Duration::from_secs(20)).wait().unwrap();
        assert_eq!(out.texts(), ["login:", "# as root", "ran exit"]);
        assert_eq!(out.code(), Some(0));
    }

    #[test]
    fn the_monitor_answers_each_command_up_to_its_prompt() {
        let socket = std::env::temp_dir().join(format!("xtask-test-{}.mon", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let fake_qemu = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"QEMU 7.2 monitor\r\n(qemu) ").unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8];
            while s.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            s.write_all(format!("{}\r\nCPU#0\r\n PC=0000000040000000\r\n(qemu) ", String::from_utf8(line).unwrap()).as_bytes()).unwrap();
        });
        let mut mon = Monitor::connect(&socket).unwrap();
        assert_eq!(mon.command("info registers -a"), "info registers -a\nCPU#0\n PC=0000000040000000\n(qemu) ");
        fake_qemu.join().unwrap();
        let _ = std::fs::remove_file(&socket);
        assert!(Monitor::connect(&socket).err().unwrap().contains("QEMU monitor"));
    }

    #[test]
    fn without_a_script_stdin_is_closed() {
        let out = sh("read x || echo eof").deadline(Duration::from_secs(20)).wait().unwrap();
        assert_eq!(out.texts(), ["eof"]);
    }
}
