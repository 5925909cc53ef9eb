// AudioWorklet: mono Float32 in, 16-bit little-endian PCM out, in 20 ms frames.
// Each frame goes to the main thread as a transferred ArrayBuffer.

class PcmEncoder extends AudioWorkletProcessor {
  constructor() {
    super();
    this.samples = Math.round(sampleRate * 0.02); // sampleRate: the AudioContext's actual rate
    this.start();
  }

  start() {
    this.frame = new DataView(new ArrayBuffer(this.samples * 2));
    this.filled = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0]; // the node mixes its input down to one channel
    if (!channel) return true;
    for (let i = 0; i < channel.length; i++) {
      const s = Math.max(-1, Math.min(1, channel[i]));
      this.frame.setInt16(this.filled * 2, s < 0 ? s * 0x8000 : s * 0x7fff, true);
      if (++this.filled === this.samples) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.start();
      }
    }
    return true;
  }
}

registerProcessor("pcm-encoder", PcmEncoder);
