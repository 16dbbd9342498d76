// benches/load.py app "1ms": waits 1 ms (a stand-in for a little I/O), then answers.
export default {
  async fetch() {
    await new Promise((resolve) => setTimeout(resolve, 1));
    return new Response("pong");
  },
};
