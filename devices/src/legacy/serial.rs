//! COM1: vm-superio's 8250 UART, writing the guest's output to a sink.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use super::tail::{OutputTail, Tee};
use crate::{BusAction, BusDevice, Interrupt};

/// Where serial output goes.
pub enum SerialSink {
    /// The process's stdout (`dust run`). With `hand_off`, each write is followed by a
    /// `sched_yield` ([`HandOff`]).
    Stdout {
        /// Yield the CPU after each write, so that a reader woken on this CPU reads now.
        hand_off: bool,
    },
    /// An open file (a worker's log).
    File(File),
    /// Anything else (tests, in-memory capture).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Discard,
}

impl SerialSink {
    /// The sink's writer, teeing into `tail`.
    fn into_writer(self, tail: &OutputTail) -> Held {
        let inner: Box<dyn Write + Send> = match self {
            SerialSink::Stdout { hand_off: false } => Box::new(io::stdout()),
            SerialSink::Stdout { hand_off: true } => Box::new(HandOff {
                out: io::stdout(),
                wrote: false,
            }),
            SerialSink::File(f) => Box::new(f),
            SerialSink::Writer(w) => w,
            SerialSink::Discard => Box::new(io::sink()),
        };
        Held {
            out: Tee {
                inner,
                tail: tail.clone(),
            },
            pending: Vec::new(),
        }
    }
}

/// Stdout that yields the CPU after each flush that follows a write. A pipe write wakes its
/// reader on the writer's own CPU (a synchronous wake-up is affine), where the reader then
/// waited until the VMM slept: after a guest's greeting, behind the rest of the guest's run
/// and the VM's teardown, ~0.13 ms (docs/benchmarks.md, "`dust run` linked with LTO, its
/// output handed to its reader, ..."). `sched_yield` lets it read first; with nobody
/// waiting it returns at once.
struct HandOff {
    out: io::Stdout,
    wrote: bool,
}

impl Write for HandOff {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.wrote = true;
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let r = self.out.flush();
        if std::mem::take(&mut self.wrote) {
            // SAFETY: sched_yield has no preconditions and touches no memory.
            unsafe { libc::sched_yield() };
        }
        r
    }
}

/// The UART's writer: holds what one exit transmits and hands it to the sink in one write
/// when the exit is done ([`Held::release`]). vm-superio writes and flushes each byte, which
/// would make a line printed through the console-write port (or `rep outsb`) one `write(2)`
/// per byte, and wake a reader on the other end of a pipe once per byte.
struct Held {
    out: Tee,
    pending: Vec<u8>,
}

impl Held {
    /// Hand the held bytes to the sink and flush it.
    fn release(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            let _ = self.out.write(&self.pending);
            self.pending.clear();
        }
        self.out.flush()
    }
}

impl Write for Held {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    /// Deferred to [`Held::release`], at the end of the exit.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Adapts our [`Interrupt`] to vm-superio's trigger.
struct Irq(Arc<dyn Interrupt>);

impl vm_superio::Trigger for Irq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// The UART on the bus (8 registers).
pub struct Serial {
    uart: vm_superio::Serial<Irq, vm_superio::serial::NoEvents, Held>,
    tail: OutputTail,
}

impl Serial {
    /// A UART that raises `irq` and writes to `sink`.
    pub fn new(irq: Arc<dyn Interrupt>, sink: SerialSink) -> Self {
        let tail = OutputTail::default();
        Self {
            uart: vm_superio::Serial::new(Irq(irq), sink.into_writer(&tail)),
            tail,
        }
    }

    /// The last bytes written, whatever the sink.
    pub fn tail(&self) -> OutputTail {
        self.tail.clone()
    }

    /// Flush buffered output (called when the VM stops).
    pub fn flush(&mut self) -> io::Result<()> {
        self.uart.writer_mut().release()
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 7],
    /// Bytes waiting in the receive FIFO.
    pub in_buffer: Vec<u8>,
}

/// A snapshot the UART model refused.
#[derive(Debug, thiserror::Error)]
pub enum SerialRestoreError {
    /// The saved receive FIFO holds more than the UART's FIFO.
    #[error("serial state refused: {0} bytes do not fit the receive FIFO")]
    FifoOverflow(usize),
    /// Raising the restored interrupt failed.
    #[error("serial state refused: raising its interrupt failed: {0}")]
    Interrupt(#[source] io::Error),
    /// Writing out pending output failed.
    #[error("serial state refused: writing its output failed: {0}")]
    Output(#[source] io::Error),
}

impl Serial {
    /// The registers as they are now.
    pub fn snapshot(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor: [s.baud_divisor_low, s.baud_divisor_high],
            registers: [
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A UART in the state `snap` describes, raising `irq` and writing to `sink`.
    pub fn restored(
        irq: Arc<dyn Interrupt>,
        sink: SerialSink,
        snap: &SerialSnapshot,
    ) -> Result<Self, SerialRestoreError> {
        let [ier, iir, lcr, lsr, mcr, msr, scr] = snap.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: snap.baud_divisor[0],
            baud_divisor_high: snap.baud_divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: snap.in_buffer.clone(),
        };
        let tail = OutputTail::default();
        let uart = vm_superio::Serial::from_state(
            &state,
            Irq(irq),
            vm_superio::serial::NoEvents,
            sink.into_writer(&tail),
        )
        .map_err(|e| match e {
            vm_superio::serial::Error::FullFifo => {
                SerialRestoreError::FifoOverflow(snap.in_buffer.len())
            }
            vm_superio::serial::Error::Trigger(e) => SerialRestoreError::Interrupt(e),
            vm_superio::serial::Error::IOError(e) => SerialRestoreError::Output(e),
        })?;
        Ok(Self { uart, tail })
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            *b = self.uart.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> BusAction {
        // The UART's registers are all one byte wide, so a wider access is a string write
        // (`rep outsb` hands over several bytes in one exit): feed it to the register byte
        // by byte. A sink that fails (closed pipe, full disk) loses output, never the VM.
        if let Ok(off) = u8::try_from(offset) {
            for b in data {
                let _ = self.uart.write(off, *b);
            }
            // What this exit transmitted goes out in one write.
            let _ = self.uart.writer_mut().release();
        }
        BusAction::None
    }
}

/// Test support: a UART whose output is kept in memory.
#[cfg(test)]
pub(crate) mod capture {
    use super::*;
    use crate::EventFdInterrupt;
    use std::sync::Mutex;

    /// The bytes a UART wrote.
    #[derive(Clone, Default)]
    pub(crate) struct Capture(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A UART writing into the returned capture.
    pub(crate) fn serial() -> (Serial, Capture) {
        let cap = Capture::default();
        let irq = Arc::new(EventFdInterrupt::new().unwrap());
        let serial = Serial::new(irq, SerialSink::Writer(Box::new(cap.clone())));
        (serial, cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_bytes_to_the_sink() {
        let (mut s, cap) = capture::serial();
        for b in b"hi\n" {
            assert_eq!(s.write(0, &[*b]), BusAction::None);
        }
        assert_eq!(s.write(0, b"ya!"), BusAction::None);
        assert_eq!(&*cap.0.lock().unwrap(), b"hi\nya!");
        assert_eq!(s.tail().text(), ("hi\nya!".into(), 0));
        // Line status register: transmitter empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
    }

    /// Records each `write` call the sink gets.
    #[derive(Clone, Default)]
    struct Calls(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_exit_reaches_the_sink_in_one_write() {
        let calls = Calls::default();
        let irq: Arc<dyn Interrupt> = Arc::new(crate::EventFdInterrupt::new().unwrap());
        let mut s = Serial::new(irq, SerialSink::Writer(Box::new(calls.clone())));
        assert_eq!(s.write(0, b"a whole line\n"), BusAction::None);
        s.write(0, b"x");
        s.write(0, b"y");
        let got = calls.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![b"a whole line\n".to_vec(), b"x".to_vec(), b"y".to_vec()]
        );
        s.flush().unwrap();
        assert_eq!(calls.0.lock().unwrap().len(), 3, "nothing was left held");
    }

    #[test]
    fn a_receive_fifo_over_the_uarts_is_refused() {
        let (s, _) = capture::serial();
        let mut snap = s.snapshot();
        snap.in_buffer = vec![b'x'; 65];
        let irq: Arc<dyn Interrupt> = Arc::new(crate::EventFdInterrupt::new().unwrap());
        let e = Serial::restored(irq.clone(), SerialSink::Discard, &snap).err();
        assert!(
            matches!(e, Some(SerialRestoreError::FifoOverflow(65))),
            "{e:?}"
        );
        snap.in_buffer = vec![b'x'; 64];
        assert!(Serial::restored(irq, SerialSink::Discard, &snap).is_ok());
    }
}
