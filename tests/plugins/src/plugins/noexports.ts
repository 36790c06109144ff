// Exports none of the five phase functions.
import { outputString } from "../lib/io";

export function hello(): i32 {
  outputString("hello");
  return 0;
}
