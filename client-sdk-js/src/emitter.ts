/** A minimal typed event emitter. */
export class Emitter<E> {
  private l: { [K in keyof E]?: Set<(e: E[K]) => void> } = {};

  /** Listen to `event`; returns a function that removes the listener. */
  on<K extends keyof E>(event: K, fn: (e: E[K]) => void): () => void {
    (this.l[event] ||= new Set()).add(fn);
    return () => void this.l[event]!.delete(fn);
  }

  protected emit<K extends keyof E>(event: K, e: E[K]): void {
    this.l[event]?.forEach((fn) => {
      try {
        fn(e);
      } catch (err) {
        // A throwing listener must not break the client's state machine, nor be swallowed:
        // rethrow outside this call stack so it reaches the host's error reporting.
        (globalThis as any).setTimeout(() => {
          throw err;
        });
      }
    });
  }
}
