// A batch SFTP client on JSch (com.jcraft.jsch 0.1.x), the library many Java systems use.
// Usage: java JschClient PORT USER PASSWORD [KEYFILE] < commands   (PASSWORD "-": none)
// Commands, one per line: put LOCAL REMOTE | resume LOCAL REMOTE | append LOCAL REMOTE |
// get REMOTE LOCAL | ls PATH | mkdir PATH | rename FROM TO | rm PATH | rmdir PATH
// Prints what ls lists and "ok COMMAND" after each command; exits 1 at the first failure.

import com.jcraft.jsch.ChannelSftp;
import com.jcraft.jsch.JSch;
import com.jcraft.jsch.Session;
import com.jcraft.jsch.SftpException;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.util.Properties;

public class JschClient {
    public static void main(String[] args) throws Exception {
        JSch jsch = new JSch();
        if (args.length > 3) {
            jsch.addIdentity(args[3]);
        }
        Session session = jsch.getSession(args[1], "127.0.0.1", Integer.parseInt(args[0]));
        Properties config = new Properties();
        if (!args[2].equals("-")) {
            session.setPassword(args[2]);
        } else {
            config.put("PreferredAuthentications", "publickey");
        }
        config.put("StrictHostKeyChecking", "no");
        session.setConfig(config);
        try {
            session.connect(30000);
            ChannelSftp sftp = (ChannelSftp) session.openChannel("sftp");
            sftp.connect(30000);
            BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
            for (String line; (line = in.readLine()) != null; ) {
                String[] w = line.trim().split(" ");
                switch (w[0]) {
                    case "put": sftp.put(w[1], w[2], ChannelSftp.OVERWRITE); break;
                    case "resume": sftp.put(w[1], w[2], ChannelSftp.RESUME); break;
                    case "append": sftp.put(w[1], w[2], ChannelSftp.APPEND); break;
                    case "get": sftp.get(w[1], w[2]); break;
                    case "ls":
                        for (Object e : sftp.ls(w[1])) {
                            System.out.println(((ChannelSftp.LsEntry) e).getLongname());
                        }
                        break;
                    case "mkdir": sftp.mkdir(w[1]); break;
                    case "rename": sftp.rename(w[1], w[2]); break;
                    case "rm": sftp.rm(w[1]); break;
                    case "rmdir": sftp.rmdir(w[1]); break;
                    default: throw new IllegalArgumentException("unknown command " + w[0]);
                }
                System.out.println("ok " + line.trim());
            }
            sftp.disconnect();
        } catch (SftpException e) {
            System.err.println("sftp error " + e.id + ": " + e.getMessage());
            System.exit(1);
        } catch (Exception e) {
            System.err.println("error: " + e);
            System.exit(1);
        } finally {
            session.disconnect();
        }
    }
}
