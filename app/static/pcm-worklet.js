// An AudioWorklet processor for the microphone page: whatever rate the AudioContext runs at (usually 44.1 or
// 48 kHz), it low-pass filters and resamples the microphone to 16 kHz mono, and posts each block's samples to
// the page as an Int16Array (pcm_s16le on every platform a browser runs on).

const ZEROS = 8;  // zero crossings of the windowed-sinc kernel on each side
const STEPS = 512;  // kernel table entries per input sample

class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;  // input samples per output sample
    // Cut-off in cycles per input sample: 90% of the output's Nyquist frequency when downsampling.
    const fc = inRate > outRate ? 0.45 * outRate / inRate : 0.5;
    this.half = Math.ceil(ZEROS / (2 * fc));  // kernel half-width in input samples
    this.table = new Float32Array(this.half * STEPS + 1);
    for (let i = 0; i < this.table.length; i++) {
      const x = i / STEPS, u = 2 * fc * x, w = Math.PI * x / this.half;
      const sinc = u === 0 ? 1 : Math.sin(Math.PI * u) / (Math.PI * u);
      this.table[i] = 2 * fc * sinc * (0.42 + 0.5 * Math.cos(w) + 0.08 * Math.cos(2 * w));  // Blackman window
    }
    this.buf = new Float32Array(this.half);  // input not consumed yet, starting with silence
    this.pos = this.half;  // where in buf the next output sample falls
  }

  push(input) {
    const buf = new Float32Array(this.buf.length + input.length);
    buf.set(this.buf);
    buf.set(input, this.buf.length);
    const out = [];
    for (; this.pos + this.half < buf.length; this.pos += this.step) {
      let sum = 0;
      for (let k = Math.ceil(this.pos - this.half); k <= this.pos + this.half; k++) {
        sum += buf[k] * this.table[Math.round(Math.abs(this.pos - k) * STEPS)];
      }
      out.push(sum);
    }
    const keep = Math.floor(this.pos) - this.half;  // the first input sample the next output needs
    this.buf = buf.slice(keep);
    this.pos -= keep;
    return out;
  }
}

class Pcm16kProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.resampler = new Resampler(sampleRate, options.processorOptions.rate);
  }

  process(inputs) {
    const channel = inputs[0][0];  // mono: the node down-mixes its input to one channel
    if (channel) {
      const out = this.resampler.push(channel);
      const pcm = Int16Array.from(out, (s) => Math.round(Math.max(-1, Math.min(1, s)) * 32767));
      this.port.postMessage(pcm, [pcm.buffer]);
    }
    return true;
  }
}

registerProcessor("pcm16k", Pcm16kProcessor);
